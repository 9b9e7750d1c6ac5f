"""`HubMixin`: `save_pretrained` / `from_pretrained` / `push_to_hub` on the model class.

The model class inherits the mixin (models -> hub); inheriting registers the class as what `config.json`'s
`architecture` is rebuilt as, so nothing in this package imports the model code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from ..config import ModelConfig
from .download import load_pretrained
from .folder import save_model_dir
from .push import push_model_dir
from .serialization import register_model_class

if TYPE_CHECKING:  # pragma: no cover
    from huggingface_hub import CommitInfo, HfApi

    from ..models.detector import DynamicATSS

__all__ = ["HubMixin"]

class HubMixin:
    """`save_pretrained` / `from_pretrained` / `push_to_hub` for `DynamicATSS` (which inherits this mixin)."""

    config: ModelConfig
    pretrained_info: dict[str, Any] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if HubMixin in cls.__bases__:  # the model class itself (not its subclasses): what config.json rebuilds
            register_model_class(cls)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        recipe: dict[str, Any] | str | None = None,
        metrics: dict[str, Any] | None = None,
        repo_id: str | None = None,
        **model_card_kwargs: Any,
    ) -> Path:
        """Write `model.safetensors`, `config.json`, a `README.md` model card and `preprocessor_config.json` (for
        transformers) into `save_directory`.

        `recipe`: the training recipe (a dict such as the training config, or a recipe name; the card names its
        `data.name` as the training data); `metrics`: e.g. `{"dataset": "coco", "split": "val2017", "AP": 40.3,
        "AP50": 57.9, ...}` (the box AP goes into the card's model-index, labelled with that dataset and split). `model_card_kwargs`: `license`, `datasets`, `tags`, `model_name`, `base_model`, `description`.
        """
        if "base_model" not in model_card_kwargs and self.pretrained_info and self.pretrained_info.get("repo_id"):
            model_card_kwargs["base_model"] = self.pretrained_info["repo_id"]
        return save_model_dir(self, save_directory, recipe=recipe, metrics=metrics, repo_id=repo_id,  # type: ignore[arg-type]
                              **model_card_kwargs)

    @classmethod
    def from_pretrained(
        cls,
        repo_id_or_dir: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
        token: str | bool | None = None,
        num_classes: int | None = None,
        endpoint: str | None = None,
        **overrides: Any,
    ) -> DynamicATSS:
        """Load a model saved with `save_pretrained` / `push_to_hub`: a folder, `"org/name"`, or any name
        `load_pretrained` understands. See `load_pretrained` for the arguments."""
        model_class = cls if isinstance(cls, type) and issubclass(cls, nn.Module) else None
        return load_pretrained(os.fspath(repo_id_or_dir), revision=revision, cache_dir=cache_dir,
                               local_files_only=local_files_only, force_download=force_download, token=token,
                               num_classes=num_classes, endpoint=endpoint, model_class=model_class, **overrides)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        commit_message: str = "Upload dynamic-atss model",
        commit_description: str | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        endpoint: str | None = None,
        api: HfApi | None = None,
        create_pr: bool = False,
        recipe: dict[str, Any] | str | None = None,
        metrics: dict[str, Any] | None = None,
        **model_card_kwargs: Any,
    ) -> CommitInfo:
        """Save to a temporary folder and upload it as one commit (see `push_model_dir`); returns the CommitInfo."""
        with tempfile.TemporaryDirectory(prefix="dynamic-atss-push-") as tmp:
            self.save_pretrained(tmp, recipe=recipe, metrics=metrics, repo_id=repo_id, **model_card_kwargs)
            return push_model_dir(
                tmp, repo_id, private=private, revision=revision, commit_message=commit_message,
                commit_description=commit_description, token=token, endpoint=endpoint, api=api,
                create_pr=create_pr, verify=False, regenerate_card=False,
            )
