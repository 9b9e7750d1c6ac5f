"""Use a dynamic-atss model from `transformers`: importing this module registers the `dynamic_atss` model type.

    import dynamic_atss.integrations.transformers  # registers the Auto classes (no trust_remote_code)
    from transformers import pipeline

    detector = pipeline("object-detection", model="org/name")   # a repo pushed by dynamic-atss, or a folder
    detector("photo.jpg", threshold=0.3)   # [{"score", "label": class name, "box": {"xmin", "ymin", "xmax", "ymax"}}]

Registered: `DynamicATSSConfig` (`AutoConfig`, model_type "dynamic_atss"), `DynamicATSSForObjectDetection`
(`AutoModelForObjectDetection`, a `PreTrainedModel` holding the package's `DynamicATSS` as `.model`) and
`DynamicATSSImageProcessor` (`AutoImageProcessor`). The weights are the package's own `model.safetensors`:
`from_pretrained` loads them through `dynamic_atss.create` (strict: no missing or unexpected tensor), and
`save_pretrained` writes the package's folder format, so both libraries read what either writes.

The model does its own resizing and normalisation (`ModelConfig.min_size` / `image_mean`), so the image processor
only turns images into float RGB tensors in [0, 1], padded to one batch, and records each image's size; the
model returns detections in those pixels, and `post_process_object_detection` rescales them to `target_sizes`.
Needs `pip install "dynamic-atss[transformers]"` (transformers 5).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForObjectDetection,
    BatchFeature,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.image_processing_utils import BaseImageProcessor
from transformers.utils import ModelOutput

from ..config import ModelConfig
from ..hub.serialization import MODEL_TYPE, config_to_json, label_names

__all__ = ["DynamicATSSConfig", "DynamicATSSForObjectDetection", "DynamicATSSImageProcessor",
           "DynamicATSSObjectDetectionOutput"]


class DynamicATSSConfig(PretrainedConfig):
    """transformers' view of a dynamic-atss `config.json`: the package's document as attributes
    (`model` holds `ModelConfig.to_dict()`), `id2label` / `label2id` from the class names."""

    model_type = MODEL_TYPE

    def __init__(self, model: dict[str, Any] | None = None, architecture: str = "DynamicATSS", format_version: int = 1,
                 library_version: str | None = None, recipe: dict[str, Any] | None = None,
                 metrics: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.model = ModelConfig.from_dict(model).to_dict() if model is not None else ModelConfig().to_dict()
        self.architecture = architecture
        self.format_version = format_version
        self.library_version = library_version
        self.recipe = recipe
        self.metrics = metrics
        names = label_names(self.model_config)
        kwargs.setdefault("id2label", dict(enumerate(names)))
        kwargs.setdefault("label2id", {name: i for i, name in enumerate(names)})
        super().__init__(**kwargs)

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.model)


@dataclass
class DynamicATSSObjectDetectionOutput(ModelOutput):
    """Detections of a batch, padded to the most detections of any image (`labels == -1` marks padding).

    scores: (B, K); labels: (B, K) class indices; pred_boxes: (B, K, 4) xyxy in the pixels of `image_sizes`;
    image_sizes: (B, 2) the (height, width) each image was given to the model at.
    """

    scores: Tensor | None = None
    labels: Tensor | None = None
    pred_boxes: Tensor | None = None
    image_sizes: Tensor | None = None


class DynamicATSSForObjectDetection(PreTrainedModel):
    """`AutoModelForObjectDetection` for dynamic-atss repos; `.model` is the package's `DynamicATSS`."""

    config_class = DynamicATSSConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"

    def __init__(self, config: DynamicATSSConfig, detector: torch.nn.Module | None = None) -> None:
        super().__init__(config)
        if detector is None:
            from ..models.detector import DynamicATSS  # noqa: PLC0415

            detector = DynamicATSS(config.model_config, backbone_pretrained=False)
        self.model = detector
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Nothing: `DynamicATSS` initialises its own layers, and loaded weights come from its checkpoint."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args: Any,
                        config: DynamicATSSConfig | None = None, revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None, token: str | bool | None = None,
                        local_files_only: bool = False, force_download: bool = False, **kwargs: Any
                        ) -> DynamicATSSForObjectDetection:
        """A Hub repo id or a folder written by dynamic-atss, loaded by `dynamic_atss.create` (strict).

        The architecture and classes come from the checkpoint's config.json (a `config` passed by the Auto
        classes is that same file). Options of transformers' loader that do nothing here are accepted at their
        neutral values (`dtype="auto"`, `subfolder=""`, ...); any other value is refused by name.
        """
        from ..factory import create  # noqa: PLC0415

        _refuse_unsupported(model_args, kwargs)
        path = os.fspath(pretrained_model_name_or_path)
        name = f"local-dir:{path}" if os.path.isdir(path) else f"hf-hub:{path}"
        detector = create(name, revision=revision, cache_dir=cache_dir, token=token,
                          local_files_only=local_files_only, force_download=force_download)
        document = config_to_json(detector.config)
        loaded_config = DynamicATSSConfig(**{k: v for k, v in document.items() if k not in ("id2label", "label2id")})
        loaded_config.name_or_path = path
        model = cls(loaded_config, detector=detector)
        return model.eval()

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """The package's folder format (config.json, model.safetensors, README.md, preprocessor_config.json);
        push it with `self.model.push_to_hub(repo_id)`."""
        neutral = {"safe_serialization": True, "push_to_hub": False, "is_main_process": True}
        refused = {key: value for key, value in kwargs.items() if neutral.get(key, object()) != value}
        if refused:
            raise TypeError(f"save_pretrained does not support {refused}; it writes the dynamic-atss folder format "
                            "(push with model.model.push_to_hub(repo_id))")
        self.model.save_pretrained(save_directory)

    def forward(self, pixel_values: Tensor, image_sizes: Tensor | None = None, **kwargs: Any
                ) -> DynamicATSSObjectDetectionOutput:
        """pixel_values: (B, 3, H, W) RGB in [0, 1] (padded); image_sizes: (B, 2) each image's (height, width)."""
        if image_sizes is None:
            image_sizes = torch.tensor([list(pixel_values.shape[-2:])] * len(pixel_values))
        images = [image[:, : int(h), : int(w)] for image, (h, w) in zip(pixel_values, image_sizes.tolist())]
        detections = self.model(images)
        most = max(len(d["scores"]) for d in detections)
        batch = len(detections)
        scores = pixel_values.new_zeros(batch, most)
        labels = torch.full((batch, most), -1, dtype=torch.int64, device=pixel_values.device)
        boxes = pixel_values.new_zeros(batch, most, 4)
        for i, d in enumerate(detections):
            n = len(d["scores"])
            scores[i, :n], labels[i, :n], boxes[i, :n] = d["scores"], d["labels"], d["boxes"]
        return DynamicATSSObjectDetectionOutput(scores=scores, labels=labels, pred_boxes=boxes,
                                                image_sizes=image_sizes.to(pixel_values.device))


# transformers' loader options that the Auto classes and `pipeline` pass, with the values that change nothing here.
_NEUTRAL_OPTIONS: dict[str, tuple[Any, ...]] = {
    "_from_auto": (True, False), "_from_pipeline": (), "trust_remote_code": (True, False, None),
    "adapter_kwargs": (None, {}), "proxies": (None,), "subfolder": ("", None), "dtype": ("auto", None, torch.float32),
    "torch_dtype": ("auto", None, torch.float32), "device_map": (None,), "code_revision": (None,),
}


def _refuse_unsupported(model_args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if model_args:
        raise TypeError(f"DynamicATSSForObjectDetection.from_pretrained takes no positional model arguments, got "
                        f"{model_args!r}")
    refused = {key: value for key, value in kwargs.items()
               if key != "_from_pipeline" and (key not in _NEUTRAL_OPTIONS or value not in _NEUTRAL_OPTIONS[key])}
    if refused:
        raise TypeError(
            f"DynamicATSSForObjectDetection.from_pretrained does not support {refused}: the model is loaded in float32 "
            "on the CPU by dynamic_atss.create (move it with .to(device); use torch.autocast for lower precision)"
        )


class DynamicATSSImageProcessor(BaseImageProcessor):
    """Images (PIL, (H, W, 3) arrays or (3, H, W) tensors) -> `pixel_values` (B, 3, H, W) RGB floats in [0, 1]
    (uint8 divided by 255), zero-padded to the largest image, and `image_sizes` (B, 2). No resizing or
    normalisation: the model does both from its own config."""

    model_input_names = ["pixel_values", "image_sizes"]

    def preprocess(self, images: Any, return_tensors: str | None = "pt", **kwargs: Any) -> BatchFeature:
        from torchvision.transforms.v2 import functional as F  # noqa: PLC0415

        if not isinstance(images, (list, tuple)):
            images = [images]
        tensors = []
        for image in images:
            if hasattr(image, "convert"):  # PIL
                image = image.convert("RGB")
            tensor = F.to_image(image)
            if tensor.shape[0] != 3:
                raise ValueError(f"expected RGB images (3 channels), got shape {tuple(tensor.shape)}")
            tensors.append(F.to_dtype(tensor, torch.float32, scale=True).as_subclass(Tensor))
        sizes = torch.tensor([list(t.shape[-2:]) for t in tensors], dtype=torch.int64)
        height, width = sizes.max(0).values.tolist()
        pixel_values = torch.zeros(len(tensors), 3, height, width)
        for i, tensor in enumerate(tensors):
            pixel_values[i, :, : tensor.shape[1], : tensor.shape[2]] = tensor
        return BatchFeature({"pixel_values": pixel_values, "image_sizes": sizes}, tensor_type=return_tensors)

    def post_process_object_detection(self, outputs: DynamicATSSObjectDetectionOutput, threshold: float = 0.5,
                                      target_sizes: Tensor | list[tuple[int, int]] | None = None
                                      ) -> list[dict[str, Tensor]]:
        """-> per image {"scores", "labels", "boxes"} with score > `threshold`, boxes xyxy rescaled from the size
        the image was given at to `target_sizes` ((height, width) per image; None: no rescaling)."""
        results = []
        for i in range(len(outputs.scores)):
            keep = (outputs.labels[i] >= 0) & (outputs.scores[i] > threshold)
            boxes = outputs.pred_boxes[i][keep]
            if target_sizes is not None:
                target_h, target_w = (float(v) for v in target_sizes[i])
                given_h, given_w = (float(v) for v in outputs.image_sizes[i])
                boxes = boxes * boxes.new_tensor([target_w / given_w, target_h / given_h] * 2)
            results.append({"scores": outputs.scores[i][keep], "labels": outputs.labels[i][keep], "boxes": boxes})
        return results


AutoConfig.register(MODEL_TYPE, DynamicATSSConfig, exist_ok=True)
AutoModelForObjectDetection.register(DynamicATSSConfig, DynamicATSSForObjectDetection, exist_ok=True)
AutoImageProcessor.register(DynamicATSSConfig, image_processor_classes={"torchvision": DynamicATSSImageProcessor,
                                                                        "pil": DynamicATSSImageProcessor},
                            exist_ok=True)
