"""Head families, one module each; importing a module registers its `HeadFamily` (`HeadConfig.kind`)."""

from . import atss  # noqa: F401  (registers "atss")
from . import gfl  # noqa: F401  (registers "gfl": GFL and GFLV2)
from . import vfnet  # noqa: F401  (registers "vfnet")
from .base import FAMILIES, DenseHead, HeadFamily, LossInputs, ScoreMaps, Targets, Variant, build_head, register_family

__all__ = [
    "FAMILIES", "DenseHead", "HeadFamily", "LossInputs", "ScoreMaps", "Targets", "Variant", "build_head",
    "register_family",
]
