"""The registered constructors: one per `Variant` of every head family (`detection/heads/<family>.py`).

Each registers its config function in the registry (the name, family, backbone token) and is exported as a
function `name(pretrained=False, **kwargs)` that only hands its name to `dynamic_atss.factory.create` (timm's
pattern: the entry point names a variant, one builder does the work). A new family's variants appear here, in
`dynamic_atss.__all__` and in `list_models()` without editing this file.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

from ..detection.heads import FAMILIES, HeadFamily, Variant
from ..factory import create
from ..registry import ModelEntry, register_model
from .detector import DynamicATSS

__all__: list[str] = []


def _constructor(name: str, doc: str) -> Callable[..., DynamicATSS]:
    def constructor(pretrained: bool = False, **kwargs: Any) -> DynamicATSS:
        tag = kwargs.pop("pretrained_tag", None)
        return create(f"{name}.{tag}" if tag else name, pretrained=pretrained, **kwargs)

    constructor.__name__ = constructor.__qualname__ = name
    constructor.__module__ = __name__
    constructor.__doc__ = doc
    return constructor


def _register(family: HeadFamily, variant: Variant) -> None:
    register_model(ModelEntry(name=variant.name, family=family.kind, trunk=variant.trunk, dcn=variant.dcn,
                              config=partial(family.variant_config, variant), doc=variant.doc))
    globals()[variant.name] = _constructor(variant.name, variant.doc)
    __all__.append(variant.name)


for _family in FAMILIES.values():
    for _variant in _family.variants:
        _register(_family, _variant)
