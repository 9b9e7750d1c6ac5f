"""Checkpoint converters from public code bases into this library's format.

mmdetection: `convert_mmdet` (any supported head family, recognised from the keys), `convert_mmdet_atss` and
`convert_mmdet_gfl`.
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
from .mmdet_gfl import convert_mmdet_gfl  # noqa: F401  (registers the mmdetection GFL head mapping)
