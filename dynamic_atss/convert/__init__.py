"""Checkpoint converters from public code bases into this library's format.

mmdetection: `convert_mmdet` (any supported head family, recognised from the keys) and `convert_mmdet_atss`.
A head family adds its mmdetection head mapping in `convert/mmdet_<family>.py` with `@register_mmdet_head`,
imported here.
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
