"""Head families, one module each; importing a module registers its `HeadConfig.kind`."""

from . import atss  # noqa: F401  (registers "atss")
from . import gfl  # noqa: F401  (registers "gfl": GFL and GFLV2)
from . import vfnet  # noqa: F401  (registers "vfnet")
from .base import HEAD_FAMILIES, DenseHead, ScoreMaps, Targets, build_head, register_head

__all__ = ["HEAD_FAMILIES", "DenseHead", "ScoreMaps", "Targets", "build_head", "register_head"]
