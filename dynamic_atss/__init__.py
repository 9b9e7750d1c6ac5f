"""Dynamic ATSS: ATSS whose label assigner combines predicted and anchor IoUs, on timm backbones."""

import importlib as _importlib
import sys as _sys

from ._version import __version__

_HELP_FLAGS = {"-h", "--help", "-V", "--version"}


def _answers_text_only() -> bool:
    """True in a `dynamic-atss` process that only prints text (bare, `--help`, `--version`, `COMMAND --help`): it
    needs no model API, so importing the package must not import torch (seconds) there."""
    argv = _sys.argv
    program = argv[0].replace("\\", "/").rsplit("/", 1)[-1] if argv else ""
    return program in ("dynamic-atss", "dynamic-atss.exe") and (len(argv) == 1 or bool(_HELP_FLAGS & set(argv[1:])))


def _load_api() -> None:
    """The public API (and the registered constructors: importing `models.zoo` registers them)."""
    def module(name: str):  # not `from . import name`: that would ask this module's __getattr__ for it
        return _importlib.import_module(f"{__name__}.{name}")

    _config, _factory, _hub, _registry = (module(name) for name in ("config", "factory", "hub", "registry"))
    optimize_for_inference = module("inference.optimize").optimize_for_inference
    zoo = module("models.zoo")
    DynamicATSS = module("models.detector").DynamicATSS

    api = {name: getattr(_config, name) for name in (
        "AnchorConfig", "AssignerConfig", "BackboneConfig", "ConventionConfig", "HeadConfig", "LossConfig",
        "ModelConfig", "TestConfig")}
    api.update(create=_factory.create, load_model=_factory.load_model, load_pretrained=_hub.load_pretrained,
               optimize_for_inference=optimize_for_inference, zoo=zoo, DynamicATSS=DynamicATSS,
               get_pretrained_cfg=_registry.get_pretrained_cfg, list_models=_registry.list_models,
               register_pretrained=_registry.register_pretrained)
    api.update({name: getattr(zoo, name) for name in zoo.__all__})  # the registered constructors
    api["__all__"] = [name for name in api if name not in ("zoo", "__all__")]
    globals().update(api)


def __getattr__(name: str):  # PEP 562: only reached where the API was not loaded at import (text-only processes)
    if name.startswith("__") and name != "__all__" or "__all__" in globals():
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _load_api()
    if name not in globals():
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return globals()[name]


if not _answers_text_only():
    _load_api()
