"""A saved-model folder: `model.safetensors` + `config.json` + `README.md` (+ `preprocessor_config.json` for
transformers); write it, read it back."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import UserInputError
from .card import generate_model_card
from .serialization import (
    CARD_NAME, CONFIG_NAME, FORMAT_VERSION, LIBRARY_NAME, PREPROCESSOR_NAME, WEIGHTS_NAME, config_to_json,
    preprocessor_config, read_config,
)

__all__ = ["ModelFolderNotFoundError", "NotAModelFolderError", "WeightsFileError", "load_model_dir", "save_model_dir"]


class WeightsFileError(UserInputError, ValueError):
    """A model folder's `model.safetensors` cannot be read (truncated, corrupt, not safetensors) or holds non-finite
    values; names the file (and the tensor)."""


class ModelFolderNotFoundError(UserInputError, FileNotFoundError):
    """A model folder that does not exist, or lacks `config.json` / `model.safetensors`; names the path."""


class NotAModelFolderError(UserInputError, ValueError):
    """A file given where a model folder is expected (e.g. an mmdetection .pth); names it and the fix."""


# ---------------------------------------------------------------------------------------------- save
def save_model_dir(
    model: nn.Module,
    save_directory: str | os.PathLike,
    *,
    recipe: dict[str, Any] | str | None = None,
    metrics: dict[str, Any] | None = None,
    repo_id: str | None = None,
    **card_kwargs: Any,
) -> Path:
    """Write `model.safetensors`, `config.json`, `README.md` and `preprocessor_config.json` (for transformers'
    AutoImageProcessor) into `save_directory` (created if needed).

    Every file (and a created folder) gets the permissions the user's umask gives new files.
    """
    from safetensors.torch import save  # noqa: PLC0415

    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    document = config_to_json(model.config, recipe, metrics)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    # Serialised in memory and written with open(): the file gets the permissions of the user's umask like
    # config.json (safetensors' save_file creates its file 0600).
    data = save(tensors, metadata={"format": "pt", "library": LIBRARY_NAME, "format_version": str(FORMAT_VERSION)})
    (directory / WEIGHTS_NAME).write_bytes(data)
    (directory / CONFIG_NAME).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    (directory / PREPROCESSOR_NAME).write_text(json.dumps(preprocessor_config(), indent=2) + "\n", encoding="utf-8")
    head = getattr(model, "head", None)
    card_kwargs.setdefault("head_description", head.describe() if hasattr(head, "describe") else None)
    card = generate_model_card(
        model.config, repo_id=repo_id, recipe=document["recipe"], metrics=document["metrics"], **card_kwargs
    )
    (directory / CARD_NAME).write_text(card, encoding="utf-8")
    return directory


def load_model_dir(directory: Path) -> tuple[ModelConfig, dict[str, Any], dict[str, Tensor]]:
    """Read `config.json` and `model.safetensors` of a saved-model folder -> (config, document, state dict)."""
    from safetensors import SafetensorError  # noqa: PLC0415
    from safetensors.torch import load_file  # noqa: PLC0415

    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise ModelFolderNotFoundError(
            f"{directory}: no such folder (expected one holding {CONFIG_NAME} and {WEIGHTS_NAME})")
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / filename).is_file():
            hint = " (only safetensors weights are read; convert a .pth with dynamic_atss.convert)" \
                if filename == WEIGHTS_NAME else ""
            raise ModelFolderNotFoundError(f"{directory}: missing {filename}{hint}")
    config, document = read_config(directory / CONFIG_NAME)
    weights = directory / WEIGHTS_NAME
    try:
        state_dict = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as error:
        raise WeightsFileError(
            f"{weights} cannot be read ({type(error).__name__}: {error}): the file is truncated or corrupt; save or "
            "download the model again"
        ) from None
    _check_finite(state_dict, weights)
    return config, document, state_dict


def _check_finite(state_dict: dict[str, Tensor], weights: Path) -> None:
    """Refuse weights holding NaN or inf (a diverged training run saved as is): they would only give NaN boxes."""
    import torch  # noqa: PLC0415

    floats = [(name, tensor) for name, tensor in state_dict.items() if tensor.is_floating_point()]
    # one sum per tensor is ~15x cheaper than isfinite over every value; a NaN or inf makes it non-finite (so may
    # an overflow, hence the exact check below before refusing anything)
    if not floats or bool(torch.isfinite(torch.stack([t.float().sum() for _, t in floats])).all()):
        return
    culprit = next(((n, t) for n, t in floats if not bool(torch.isfinite(t).all())), None)
    if culprit is None:
        return
    name, tensor = culprit
    bad = int((~torch.isfinite(tensor)).sum())
    raise WeightsFileError(
        f"{weights}: tensor {name!r} holds {bad} NaN/inf value(s) of {tensor.numel()}; these weights are broken (a "
        "diverged training run?): load an earlier checkpoint, or save or download the model again"
    )

