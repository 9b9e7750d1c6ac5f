"""Checkpoint converters from public code bases into this library's format, and URL weights built on them."""

from .mmdet import (  # noqa: F401
    MMDetConversionError,
    convert_mmdet_atss,
    convert_mmdet_state_dict,
    infer_mmdet_backbone,
    load_checkpoint_file,
    mmdet_atss_config,
)
from .url import (  # noqa: F401
    CONVERTERS,
    MIRROR_ENV,
    WeightsDownloadError,
    checkpoint_path,
    converted_dir,
    fetch_checkpoint,
    load_url_weights,
    sha256_file,
)
