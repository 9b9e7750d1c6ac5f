import collections
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode
import dynamic_atss as da
import huggingface_hub
from dynamic_atss import registry
from dynamic_atss.convert import MIRROR_ENV

# Tiny models keep the suite fast on 2 CPU cores: timm's test_resnet trunk, 32-channel FPN/head.
TINY = {
    "backbone": "test_resnet",
    "fpn_channels": 32,
    "head.channels": 32,
    "head.num_groups": 8,
    "head.num_convs": 2,
    "min_size": 128,
    "max_size": 192,
}


@pytest.fixture
def tiny_kwargs():
    return dict(TINY)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    # Tiny tensors: one thread avoids oversubscription (a busy 2-core machine is 10-100x slower with 2).
    torch.set_num_threads(1)


@pytest.fixture
def refuse(monkeypatch):
    """`refuse(module, "name")`: the test fails if `module.name` is called (an error must come before it)."""
    def install(module, name):
        def refused(*args, **kwargs):
            raise AssertionError(f"{name} was called before the expected error")

        monkeypatch.setattr(module, name, refused)

    return install


@pytest.fixture
def train_batch():
    """Two 128x160 images and their targets (one and two boxes) for one training step."""
    images = [torch.rand(3, 128, 160), torch.rand(3, 128, 160)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 90.0, 100.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[30.0, 5.0, 140.0, 70.0], [0.0, 0.0, 40.0, 40.0]]),
                "labels": torch.tensor([0, 3])}]
    return images, targets


class HostSyncs(TorchFunctionMode):
    """Within `with HostSyncs() as syncs:`, counts the tensor calls that read a value back to the host (on a GPU
    each waits for the queued kernels) in `syncs.seen`, keyed by (file, function) of the innermost dynamic_atss
    frame and the call's name."""

    CALLS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "numpy"}

    def __init__(self):
        super().__init__()
        self.seen = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.CALLS:
            frame = sys._getframe(1)
            while frame is not None and "dynamic_atss" not in frame.f_code.co_filename:
                frame = frame.f_back
            where = (frame.f_code.co_filename.rsplit("/", 1)[-1], frame.f_code.co_name) if frame else ("?", "?")
            self.seen[(*where, name)] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def host_syncs():
    return HostSyncs


def _assert_same_detections(expected, got, rtol=1e-3):
    """Same labels and count per image; boxes within `rtol` relative to the image's box scale (1e-3 px / px);
    scores within 1e-4."""
    assert len(expected) == len(got)
    for index, (e, g) in enumerate(zip(expected, got)):
        assert len(e["boxes"]) > 10, f"image {index}: too few detections to compare"
        assert torch.equal(e["labels"], g["labels"].to(e["labels"])), f"image {index}: labels differ"
        scale = e["boxes"].abs().max()
        assert float((e["boxes"] - g["boxes"]).abs().max() / scale) <= rtol, f"image {index}: boxes differ"
        torch.testing.assert_close(g["scores"], e["scores"], rtol=0, atol=1e-4)


@pytest.fixture
def assert_same_detections():
    return _assert_same_detections



# ----------------------------------------------------------------------------------------------- ONNX
@pytest.fixture(scope="module")
def onnx_deps():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty Hub cache; also the default one, so nothing of the user's cache is read."""
    path = tmp_path / "hf-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return path


@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(registry, "_PRETRAINED", dict(registry._PRETRAINED))
    monkeypatch.setattr(registry, "_DEFAULT_TAG", dict(registry._DEFAULT_TAG))


@pytest.fixture
def saved_tiny_model(tmp_path, tiny_kwargs):
    model = da.create("r50", num_classes=3, class_names=["a", "b", "c"], **tiny_kwargs)
    with torch.no_grad():
        model.head.cls_logits.bias.fill_(2.0)  # confident random model: plenty of boxes to draw
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@pytest.fixture
def torch_cache(tmp_path, monkeypatch):
    """An empty torch hub cache (where URL weights go), online."""
    path = tmp_path / "torch-hub"
    monkeypatch.setattr(torch.hub, "_hub_dir", str(path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    return path / "checkpoints"
