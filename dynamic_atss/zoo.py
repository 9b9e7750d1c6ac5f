"""The registered constructors, timm-style: one function `name(pretrained=False, **kwargs)` per `Variant` of every
head family (`detection/heads/<family>.py`), generated from the family specs; each only hands its name to
`dynamic_atss.factory.create` (one builder does the work).

The names themselves are registered with the registry by the families (`register_family`), so the factory knows
them without this module; the package root imports this module for the functions (exported in
`dynamic_atss.__all__`). A new family's variants appear here without editing this file.
"""

from __future__ import annotations

from typing import Any, Callable

from .detection.heads import FAMILIES
from .factory import create
from .models.detector import DynamicATSS

__all__: list[str] = []


def _constructor(name: str, doc: str) -> Callable[..., DynamicATSS]:
    def constructor(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
        tag = kwargs.pop("pretrained_tag", None)
        return create(f"{name}.{tag}" if tag else name, pretrained=pretrained, **kwargs)

    constructor.__name__ = constructor.__qualname__ = name
    constructor.__module__ = __name__
    constructor.__doc__ = doc
    return constructor


for _family in FAMILIES.values():
    for _variant in _family.variants:
        globals()[_variant.name] = _constructor(_variant.name, _variant.doc)
        __all__.append(_variant.name)
