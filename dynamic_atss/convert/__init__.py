"""Checkpoint converters from public code bases into this library's format."""

from .mmdet import (  # noqa: F401
    MMDetConversionError,
    convert_mmdet_atss,
    convert_mmdet_state_dict,
    infer_mmdet_backbone,
    load_checkpoint_file,
)
