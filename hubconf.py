"""`torch.hub` entry points: one per registered constructor (`dynamic_atss.list_models()`), generated from the
registry, so a new constructor is an entry point without editing this file.

    model = torch.hub.load("path/to/dynamic-atss", "dynamic_atss_r50", source="local")          # random weights
    model = torch.hub.load(repo, "atss_r50", source="local", pretrained=True)                # the default tag
    model = torch.hub.load(repo, "atss_r50", source="local", pretrained="mmdet_coco_1x")     # a tag
    model = torch.hub.load(repo, "dynamic_atss_r50", source="local", pretrained="hf-hub:org/name")  # a saved model

`pretrained` is `create`'s (`False` / `True`), a weights tag of that model, or anything `create` loads by
name (`hf-hub:org/name[@rev]`, `local-dir:/path`, a folder); other keyword arguments go to `create`.
"""

import dynamic_atss as _dynamic_atss

dependencies = ["torch", "torchvision", "timm", "huggingface_hub", "safetensors", "yaml"]

_SAVED_MODEL_PREFIXES = ("hf-hub:", "local-dir:")


def _entry_point(name):
    def entry_point(pretrained=False, **kwargs):
        if isinstance(pretrained, str):
            if pretrained.startswith(_SAVED_MODEL_PREFIXES) or "/" in pretrained:
                return _dynamic_atss.create(pretrained, **kwargs)
            return _dynamic_atss.create(f"{name}.{pretrained}", **kwargs)
        return _dynamic_atss.create(name, pretrained=pretrained, **kwargs)

    entry_point.__name__ = entry_point.__qualname__ = name
    entry_point.__doc__ = f"`dynamic_atss.create({name!r}, ...)`.\n\n{__doc__}"
    return entry_point


for _name in _dynamic_atss.list_models():
    globals()[_name] = _entry_point(_name)
