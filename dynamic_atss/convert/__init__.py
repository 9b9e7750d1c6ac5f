"""Checkpoint converters from public code bases into this library's format, and URL weights built on them.

mmdetection: `convert_mmdet` (any supported head family, recognised from the keys), `convert_mmdet_atss`,
`convert_mmdet_gfl` (convert/mmdet_gfl.py), `convert_mmdet_vfnet` (convert/mmdet_vfnet.py).
A head family adds its mmdetection head mapping in `convert/mmdet_<family>.py` with `@register_mmdet_head`,
imported here, which registers the converter `mmdet_<family>` with the registry; its public checkpoints in
`model_index.json` then load by URL (`convert/url.py`). The package root imports this package.
"""

from .mmdet import (  # noqa: F401
    MMDET_HEADS,
    MMDetConversionError,
    convert_mmdet,
    convert_mmdet_atss,
    convert_mmdet_state_dict,
    infer_mmdet_backbone,
    load_checkpoint_file,
    register_mmdet_head,
)
from .mmdet_gfl import convert_mmdet_gfl  # noqa: F401  (registers the mmdetection GFL head mapping)
from .mmdet_vfnet import convert_mmdet_vfnet  # noqa: F401  (registers the VFNet head mapping)
from .url import (  # noqa: F401
    MIRROR_ENV,
    WeightsDownloadError,
    checkpoint_path,
    converted_dir,
    fetch_checkpoint,
    load_url_weights,
)
