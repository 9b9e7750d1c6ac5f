"""models/detector.py: forward, preprocessing, training forward and the weights the model follows.

The default path computes from the parameters and buffers the model holds at each call (no cache derived from
weights), so every ordinary way of changing, saving, copying, hooking, tracing, differentiating or sharing a model
works; the `optimize_for_inference` snapshot keeps its own weights (source edits do not reach it, a new snapshot
follows them) and behaves the same way otherwise.

The model has 128-channel FPN / head convolutions: an earlier main ran those by a cached transform of the weights
(besides the cached BatchNorm folding of the backbone), which these tests caught going stale."""

from __future__ import annotations

import copy
import io
import pickle
import sys
import threading
import warnings
import math

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import dynamic_atss as da
from dynamic_atss.data import SyntheticShapes

MEDIUM = {"backbone": "test_resnet", "fpn_channels": 128, "head.channels": 128, "head.num_groups": 8,
          "head.num_convs": 1, "min_size": 128, "max_size": 128}  # fmt: skip
PATHS = ("default", "snapshot")


def build(seed: int = 0, **overrides) -> nn.Module:
    """A small model in eval mode with non-trivial BatchNorm statistics (timm zero-inits each block's last gamma,
    which would hide a skipped or doubled BatchNorm)."""
    torch.manual_seed(seed)
    model = da.create("r50", num_classes=4, **{**MEDIUM, **overrides}).eval()
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, FrozenBatchNorm2d):
                bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 1.5)
    return model


def fresh(state: dict[str, torch.Tensor]) -> nn.Module:
    model = build(seed=123)
    model.load_state_dict(state)
    return model


def raw(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t for level in model.forward_raw(x) for t in level]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))


def assert_close(got: list[torch.Tensor], expected: list[torch.Tensor], rtol: float = 1e-4) -> None:
    """Float rounding of the fused weights: within `rtol` of the largest magnitude of each output."""
    for g, e in zip(got, expected, strict=True):
        assert float((g - e).abs().max()) <= rtol * float(e.abs().max()), float((g - e).abs().max() / e.abs().max())


@pytest.fixture
def x():
    return torch.randn(1, 3, 128, 128)


# ------------------------------------------------------------------------------------------------ weight changes
def _parameters(model: nn.Module) -> list[nn.Parameter]:
    return list(model.parameters())


def load_state_dict(model, source):
    model.load_state_dict(source.state_dict())
    return model


def optimizer_step(model, source):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    return model


def assign_data(model, source):
    for p, q in zip(_parameters(model), _parameters(source)):
        p.data = q.data.clone()
    return model


def copy_into_data(model, source):
    for p, q in zip(_parameters(model), _parameters(source)):
        p.data.copy_(q.data)
    return model


def vector_to_parameters(model, source):
    vector = torch.nn.utils.parameters_to_vector(source.parameters())
    torch.nn.utils.vector_to_parameters(vector, model.parameters())
    return model


def foreach_lerp(model, source):
    with torch.no_grad():
        torch._foreach_lerp_(_parameters(model), _parameters(source), 0.5)
    return model


def averaged_model(model, source):
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.5))
    raw(ema.module, torch.randn(1, 3, 64, 64))  # the EMA model is evaluated between updates
    ema.update_parameters(source)
    return ema.module


def bfloat16_round_trip(model, source):
    return model.to(torch.bfloat16).float()


def edit_batch_norm_buffers(model, source):
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, FrozenBatchNorm2d):
                bn.running_mean.add_(0.5)
                bn.running_var.mul_(2.0)
    return model


def edit_batch_norm_buffers_through_data(model, source):
    for bn in model.modules():
        if isinstance(bn, FrozenBatchNorm2d):  # .data: no version counter bump
            bn.running_var.data.mul_(2.0)
            bn.weight.data.copy_(bn.weight.data * 0.5)
    return model


CHANGES = [load_state_dict, optimizer_step, assign_data, copy_into_data, vector_to_parameters, foreach_lerp,
           averaged_model, bfloat16_round_trip, edit_batch_norm_buffers, edit_batch_norm_buffers_through_data]


@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__)
def test_default_path_follows_every_weight_change(change, x):
    """After one call, the weights change; the next call equals a freshly built model with that state dict."""
    model, source = build(0), build(1)
    before = raw(model, x)
    changed = change(model, source)
    after = raw(changed, x)
    assert not same(after, before), "the change did not change the weights"
    assert same(after, raw(fresh(changed.state_dict()), x))


@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__)
def test_snapshot_keeps_its_weights_and_a_new_one_follows(change, x):
    model, source = build(0), build(1)
    raw(model, x)
    snapshot = da.optimize_for_inference(model)
    before = raw(snapshot, x)
    changed = change(model, source)
    assert same(raw(snapshot, x), before)  # the source's edits do not reach the snapshot
    assert_close(raw(da.optimize_for_inference(changed), x), raw(fresh(changed.state_dict()), x))


def test_weights_loaded_under_inference_mode_are_read(x):
    """A model built, called and reloaded under `torch.inference_mode` (inference tensors have no version counter)."""
    state = build(1).state_dict()
    with torch.inference_mode():
        model = build(0)
        before = raw(model, x)
        model.load_state_dict(state)
        after = raw(model, x)
    assert not same(after, before)
    assert same(after, raw(fresh(state), x))
    with torch.inference_mode():
        snapshot = da.optimize_for_inference(model)
    assert_close(raw(snapshot, x), after)


# ------------------------------------------------------------------------------------------------ save, pickle, copy
def _torch_save_load(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)  # a model this test built itself


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("how", ["torch.save", "pickle", "deepcopy"])
def test_save_pickle_and_deepcopy_after_a_call(path, how, x):
    model = build(0)
    if path == "snapshot":
        model = da.optimize_for_inference(model)
    expected = raw(model, x)
    images = [torch.rand(3, 100, 120)]
    with torch.no_grad():
        detections = model(images)
    copied = {"torch.save": _torch_save_load, "pickle": lambda m: pickle.loads(pickle.dumps(m)),
              "deepcopy": copy.deepcopy}[how](model)
    assert type(copied) is type(model)
    assert same(raw(copied, x), expected)
    with torch.no_grad():
        again = copied(images)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(detections, again) for k in a)


# ------------------------------------------------------------------------------------------------ hooks
def _doubled(module, args, output):
    return output.clone() * 2


def _doubled_input(module, args):
    return (args[0] * 2,)


def test_hooks_on_any_submodule_change_what_follows_as_on_plain_modules(x):
    """Doubling a backbone conv's output (forward hook) or its BatchNorm's input (pre-hook) equals doubling that
    conv's weight: exactly, since scaling by 2 is exact in floating point."""
    model = build(0)
    reference = build(0)
    with torch.no_grad():
        reference.backbone.trunk.layer1[0].conv1.weight.mul_(2)
    expected = raw(reference, x)
    block = model.backbone.trunk.layer1[0]
    for module, register, hook in ((block.conv1, "register_forward_hook", _doubled),
                                   (block.bn1, "register_forward_pre_hook", _doubled_input)):
        handle = getattr(module, register)(hook)
        assert same(raw(model, x), expected), register
        handle.remove()
    plain = build(0)
    model.head.cls_logits.register_forward_hook(_doubled)  # a head conv (no BatchNorm after it)
    with torch.no_grad():
        doubled, expected_cls = model.forward_raw(x)[0], plain.forward_raw(x)[0]
    assert all(torch.equal(a, 2 * b) for a, b in zip(doubled, expected_cls))


def test_snapshot_hooks(x):
    """In the snapshot a fused conv's output already has its BatchNorm applied (the BatchNorm is an Identity): a
    hook there acts as a hook on the source's BatchNorm output; hooks elsewhere act as on the source."""
    model = build(0)
    snapshot = da.optimize_for_inference(model)
    fused_conv = snapshot.model.backbone.trunk.layer1[0].conv1
    assert isinstance(snapshot.model.backbone.trunk.layer1[0].bn1, nn.Identity)
    for snap_module, source_module in ((fused_conv, model.backbone.trunk.layer1[0].bn1),
                                       (snapshot.model.fpn, model.fpn)):
        handles = [m.register_forward_hook(lambda m, a, out: [o.clone() * 2 for o in out] if isinstance(out, list)
                                           else out.clone() * 2) for m in (snap_module, source_module)]
        assert_close(raw(snapshot, x), raw(model, x))
        for handle in handles:
            handle.remove()
    # a pre-hook on a fused conv acts as one on the source's conv
    handles = [m.register_forward_pre_hook(_doubled_input) for m in (fused_conv, model.backbone.trunk.layer1[0].conv1)]
    doubled = raw(snapshot, x)
    assert_close(doubled, raw(model, x))
    for handle in handles:
        handle.remove()
    assert not same(raw(snapshot, x), doubled)


# ------------------------------------------------------------------------------------------------ trace, autograd
@pytest.mark.parametrize("path", PATHS)
def test_jit_trace_of_forward_raw_matches(path, x):
    model = build(0)
    if path == "snapshot":
        model = da.optimize_for_inference(model)
    raw(model, x)
    with warnings.catch_warnings():
        # the tracer's check (it runs the traced graph and the module again): "... does not match the corresponding
        # output of the Python function"; other tracer warnings (GroupNorm's batch-size check) are about generality
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("error", ".*does not match", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", r"`torch\.jit\.trace\w*` is deprecated", FutureWarning)
        traced = torch.jit.trace_module(model, {"forward_raw": x})
    with torch.no_grad():
        assert same([t for level in traced.forward_raw(x) for t in level], raw(model, x))


def _custom_functions(loss: torch.Tensor) -> set[str]:
    """Names of the custom `torch.autograd.Function`s in `loss`'s graph."""
    seen, stack, custom = set(), [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            custom.add(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return custom


def test_double_backward_through_a_training_loss_on_plain_ops(train_batch):
    images, targets = train_batch
    model = build(0, min_size=160, max_size=200).train()  # P3 at 20 x 25: 128-channel convs, plain ops
    loss = sum(model(images, targets).values())
    assert _custom_functions(loss) == set()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, create_graph=True)
    penalty = sum((g**2).sum() for g in grads)
    penalty.backward()
    assert all(p.grad is not None for p in model.head.parameters())
    assert all(torch.isfinite(p.grad).all() for p in params if p.grad is not None)
    assert any(p.grad.abs().sum() > 0 for p in params if p.grad is not None)


# ------------------------------------------------------------------------------------------------ threads
@pytest.mark.parametrize("path", PATHS)
def test_one_model_called_from_four_threads_gives_the_serial_results(path):
    model = build(0, **{"fpn_channels": 32, "head.channels": 32})
    if path == "snapshot":
        model = da.optimize_for_inference(model)
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(1, 3, 64, 64, generator=generator) for _ in range(8)]
    expected = [raw(model, x) for x in inputs]
    calls = 60
    mismatches: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            for call in range(calls):
                index = (thread + call) % len(inputs)
                if not same(raw(model, inputs[index]), expected[index]):
                    mismatches.append((thread, call))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    assert not mismatches, f"{len(mismatches)} of {4 * calls} threaded calls differ from the serial results"


# ------------------------------------------------------------------------------------------------ default path parts
def test_frozen_batch_norm_is_torchvisions_in_one_kernel():
    """Same buffers and state-dict keys as torchvision's FrozenBatchNorm2d, same outputs, channels_last kept."""
    from dynamic_atss.models.backbone import OneKernelFrozenBatchNorm2d

    ours, theirs = OneKernelFrozenBatchNorm2d(8), FrozenBatchNorm2d(8)
    with torch.no_grad():
        for buffer in ("weight", "bias", "running_mean", "running_var"):
            getattr(theirs, buffer).uniform_(0.5, 1.5)
    ours.load_state_dict(theirs.state_dict())
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x = torch.randn(2, 8, 5, 7).contiguous(memory_format=torch.channels_last)
    out = ours(x)
    torch.testing.assert_close(out, theirs(x), rtol=1e-6, atol=1e-6)
    assert out.is_contiguous(memory_format=torch.channels_last)
    model = build(0)
    assert all(type(m) is OneKernelFrozenBatchNorm2d for m in model.modules() if isinstance(m, FrozenBatchNorm2d))


def test_default_inference_runs_channels_last_on_cpu(x):
    model = build(0)
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in raw(model, x))
    assert all(p.is_contiguous() for p in model.parameters())  # the parameters keep their layout
    assert all(t.is_contiguous() for t in model.state_dict().values())


def test_forward_raw_shapes(tiny_kwargs):
    model = da.create("r50", num_classes=7, **tiny_kwargs).eval()
    cls, box, quality = model.forward_raw(torch.randn(2, 3, 128, 192))
    for level, stride in enumerate((8, 16, 32, 64, 128)):
        h, w = math.ceil(128 / stride), math.ceil(192 / stride)
        assert cls[level].shape == (2, 7, h, w)
        assert box[level].shape == (2, 4, h, w)
        assert quality[level].shape == (2, 1, h, w)


def test_eval_forward_two_image_sizes(tiny_kwargs):
    model = da.create("r50", num_classes=3, **tiny_kwargs).eval()
    model.config.test.score_thresh = 0.0  # random weights score ~0.01: keep everything
    images = [torch.rand(3, 90, 150), torch.rand(3, 200, 120)]
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det, image in zip(out, images, strict=True):
        assert set(det) == {"boxes", "scores", "labels"}
        assert 0 < len(det["boxes"]) <= 100
        assert det["labels"].dtype == torch.int64 and det["labels"].max() < 3
        height, width = image.shape[1:]
        assert (det["boxes"][:, 0::2] >= 0).all() and (det["boxes"][:, 0::2] <= width + 1e-3).all()
        assert (det["boxes"][:, 1::2] >= 0).all() and (det["boxes"][:, 1::2] <= height + 1e-3).all()
        # a box beyond the image would have been clipped to it: some must touch the far edges
        assert det["boxes"][:, 2].max() > 0.5 * width


def test_resize_respects_min_and_max_size(tiny_kwargs):
    model = da.create("r50", **tiny_kwargs).eval()
    batch, sizes, original = model.preprocess([torch.rand(3, 100, 1000), torch.rand(3, 64, 64)])
    assert sizes.tolist() == [[19, 192], [128, 128]]  # longer side capped at 192; shorter side to 128
    assert batch.shape == (2, 3, 128, 192) and batch.shape[-1] % 32 == 0
    assert original == [(100, 1000), (64, 64)]


@pytest.mark.parametrize(
    "images, match",
    [
        ([torch.rand(3, 32, 32), torch.rand(1, 32, 32)], "image 1: expected shape"),
        ([torch.rand(3, 32, 32), torch.rand(3, 0, 32)], "image 1: has a zero side"),
        ([torch.zeros(3, 32, 32, dtype=torch.uint8)], r"image 0: .*float"),
        ([], "non-empty"),
    ],
)
def test_bad_images_name_the_index(tiny_kwargs, images, match):
    model = da.create("r50", **tiny_kwargs).eval()
    with pytest.raises(ValueError, match=match):
        model(images)


def test_scores_follow_the_score_convention(tiny_kwargs):
    model = da.create("r50", **tiny_kwargs).eval()
    model.config.test.score_thresh = 0.0
    image = [torch.rand(3, 128, 128)]
    with torch.no_grad():
        sqrt_scores = model(image)[0]["scores"]
        model.config.conventions.score_sqrt = False
        plain_scores = model(image)[0]["scores"]
    torch.testing.assert_close(sqrt_scores[:5] ** 2, plain_scores[:5], rtol=1e-4, atol=1e-6)


def test_one_public_preprocessing(tiny_kwargs):
    """`preprocess(normalize=False)` is what graphs that normalise inside get; nothing outside the detector
    calls its private checks (ONNX Runtime and export share the public transform)."""
    import ast
    from pathlib import Path

    model = da.create("r50", **tiny_kwargs).eval()
    images = [torch.rand(3, 70, 90), torch.rand(3, 50, 40)]
    normalised, sizes, original = model.preprocess(images)
    plain, plain_sizes, _ = model.preprocess(images, normalize=False)
    assert torch.equal(sizes, plain_sizes) and original == [(70, 90), (50, 40)]
    for index, (height, width) in enumerate(sizes.tolist()):
        torch.testing.assert_close(normalised[index, :, :height, :width],
                                   model.normalize(plain[index, :, :height, :width]))
    package = Path(da.__file__).parent
    for path in (package / "inference").glob("*.py"):
        private = {node.attr for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Attribute)
                   and node.attr in ("_check_images", "_target_size")}
        assert not private, f"{path.name} calls {private}"


def test_float_images_in_0_255_are_refused_with_the_fix(tiny_kwargs):
    """Issue 18, item 9: `model(images)` with floats in 0..255 used to give wrong boxes silently."""
    model = da.create("r50", num_classes=3, **tiny_kwargs).eval()
    with pytest.raises(ValueError, match=r"image 1: values in \[0, 255\], expected floats in \[0, 1\]; divide 0-255 "
                                         r"images by 255"):
        model([torch.rand(3, 64, 64), torch.full((3, 64, 64), 255.0).index_fill_(1, torch.tensor([0]), 0.0)])
    with pytest.raises(ValueError, match="pass the images unnormalised"):
        model([torch.randn(3, 64, 64) * 2])
    assert len(model([torch.rand(3, 64, 64)])) == 1  # [0, 1] passes


def one_image(size=128):
    image, target = SyntheticShapes(1, (size, size), seed=3, min_objects=3, max_objects=4)[0]
    return [image], [{"boxes": target["boxes"].as_subclass(torch.Tensor), "labels": target["labels"]}]


def test_tiny_model_overfits_one_image(tiny_kwargs):
    torch.manual_seed(0)
    model = da.create("r50", num_classes=6, **{**tiny_kwargs, "backbone.norm": "bn", "backbone.frozen_stages": -1}).train()
    images, targets = one_image()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    history = []
    for _ in range(50):
        losses, stats = model(images, targets, return_stats=True)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        history.append(float(sum(losses.values()).detach()))
    assert history[-1] < 0.5 * history[0], history[::10]
    assert float(stats["num_pos"]) > 0


def test_every_head_parameter_gets_a_gradient_even_without_gt(tiny_kwargs):
    model = da.create("r50", num_classes=6, **tiny_kwargs).train()
    images, targets = one_image()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    for batch_images, batch_targets in (([images[0], images[0]], [targets[0], empty]), ([images[0]], [empty])):
        model.zero_grad()
        losses = model(batch_images, batch_targets)
        assert set(losses) == {"loss_cls", "loss_box", "loss_quality"}  # parts only: sum() is the loss
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        missing = [n for n, p in model.head.named_parameters() if p.grad is None]
        assert not missing, missing
    assert float(losses["loss_box"].detach()) == 0.0 and float(losses["loss_quality"].detach()) == 0.0  # the all-empty batch


@pytest.mark.parametrize("cls_loss", ["focal", "qfl", "vfl"])
@pytest.mark.parametrize("quality", ["centerness", "iou"])
@pytest.mark.parametrize("weights", [(0.0, 1.0), (1.0, 0.0), (1.0, 1.0), ("up", "down")])
def test_table_ii_and_iii_switches_run(tiny_kwargs, cls_loss, quality, weights):
    model = da.create("r50", num_classes=6, **tiny_kwargs, **{
        "loss.cls_loss": cls_loss, "head.quality": quality,
        "assigner.pred_weight": weights[0], "assigner.anchor_weight": weights[1],
    }).train()
    images, targets = one_image(96)
    losses, stats = model(images, targets, progress=0.3, return_stats=True)  # training state passed, not set
    assert all(torch.isfinite(v) for v in losses.values())
    if weights == ("up", "down"):
        assert float(stats["pred_weight"]) == pytest.approx(0.3)
        assert float(stats["anchor_weight"]) == pytest.approx(0.7)


@pytest.mark.parametrize(
    "boxes, labels, match",
    [
        ([[10.0, 10.0, 10.0, 40.0]], [0], r"image 1: box 0 .*zero or negative width"),
        ([[10.0, 10.0, 50.0, float("nan")]], [0], r"image 1: box 0 .*not finite"),
        ([[10.0, 10.0, 50.0, 50.0]], [6], r"image 1: label 6 is outside \[0, 6\)"),
        ([[10.0, 10.0, 50.0, 50.0]], [0, 1], r"image 1: 1 boxes but 2 labels"),
    ],
)
def test_bad_targets_name_the_image(tiny_kwargs, boxes, labels, match):
    model = da.create("r50", num_classes=6, **tiny_kwargs).train()
    images, targets = one_image()
    bad = {"boxes": torch.tensor(boxes), "labels": torch.tensor(labels)}
    with pytest.raises(ValueError, match=match):
        model(images * 2, targets + [bad])


def test_train_mode_needs_targets(tiny_kwargs):
    model = da.create("r50", **tiny_kwargs).train()
    with pytest.raises(ValueError, match="needs targets"):
        model([torch.rand(3, 64, 64)])


# Every host-device synchronisation of a training step (forward + backward), by the function it is in. On a GPU
# each one waits for the queued kernels, so the list is kept short and each entry is justified:
ALLOWED_SYNCS = {
    ("detector.py", "_prepare_targets", "__bool__"): 1,  # bad boxes / labels, one check per batch, on the host
    # where the targets are (the trainer keeps them there: no device involved)
    ("detector.py", "forward", "tolist"): 1,  # resized image sizes: a CPU tensor, no device involved
    ("assigner.py", "__call__", "tolist"): 1,  # CPU only: exactness of every level's window search at once
    ("base.py", "gather_positive", "nonzero"): 1,  # indices of the positives: their number sets the loss shapes
}


@pytest.mark.parametrize("kind", ["atss", "gfl", "vfnet"])
def test_training_step_host_synchronisations_are_the_justified_ones(tiny_kwargs, kind, train_batch, host_syncs):
    model = da.create(f"dynamic_{kind}_r50", num_classes=4, **tiny_kwargs).train()
    images, targets = train_batch
    with host_syncs() as syncs:
        losses = model(images, targets)
        sum(losses.values()).backward()
    assert dict(syncs.seen) == ALLOWED_SYNCS


def test_a_non_finite_image_is_refused_naming_its_index():
    """Issue 25: one NaN pixel gave 0 detections and no error (the range check compares aminmax results, and every
    comparison with NaN is False); inf was refused already."""
    model = build(0, min_size=64, max_size=64).eval()
    images = [torch.rand(3, 40, 50), torch.rand(3, 40, 50)]
    images[1][0, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="image 1: holds NaN"):
        model(images)
    images[1][0, 3, 4] = float("inf")
    with pytest.raises(ValueError, match="image 1: values in"):
        model(images)


def _attributes(module):
    """Every attribute of every submodule (parameters and buffers by identity and value), to compare before/after."""
    state = {}
    for name, sub in module.named_modules():
        for key, value in vars(sub).items():
            if key in ("_parameters", "_buffers"):
                state[(name, key)] = {k: (id(v), v.detach().clone()) for k, v in value.items() if v is not None}
            elif key == "_modules":
                state[(name, key)] = {k: id(v) for k, v in value.items()}
            elif not key.startswith("_"):  # config, training, prior_generator, ...: the same objects afterwards
                state[(name, key)] = value
    return state


def _same_attributes(before, after):
    assert before.keys() == after.keys(), set(before) ^ set(after)
    for key, value in before.items():
        if isinstance(value, dict) and value and isinstance(next(iter(value.values())), tuple):
            assert value.keys() == after[key].keys(), key
            for name, (identity, tensor) in value.items():
                assert after[key][name][0] == identity and torch.equal(after[key][name][1], tensor), (key, name)
        else:
            assert after[key] is value or after[key] == value, key


@pytest.mark.parametrize("name", ["r50", "dynamic_gflv2_r50", "dynamic_vfnet_r50"])
def test_forward_is_stateless(tiny_kwargs, name):
    """Issue 23: forward wrote `model.assign_stats` and read `model.train_progress`. Now two calls write no
    attribute anywhere in the model, and a call's output does not depend on the call before it."""
    model = da.create(name, num_classes=6, **{**tiny_kwargs, "assigner.pred_weight": "up"}).train()
    assert not hasattr(model, "assign_stats") and not hasattr(model, "train_progress")
    images, targets = one_image(96)
    other_images, other_targets = one_image(128)
    before = _attributes(model)
    first, first_stats = model(images, targets, progress=0.25, return_stats=True)
    model(other_images, other_targets, progress=0.9)
    again, again_stats = model(images, targets, progress=0.25, return_stats=True)
    _same_attributes(before, _attributes(model))
    assert not hasattr(model, "assign_stats") and not hasattr(model, "train_progress")
    for key in first:
        torch.testing.assert_close(again[key], first[key], rtol=0, atol=0)
    assert float(first_stats["pred_weight"]) == pytest.approx(0.25)
    assert {k: float(v) for k, v in again_stats.items()} == {k: float(v) for k, v in first_stats.items()}
    # progress is an argument (default 0.0), not a model attribute
    _, default_stats = model(images, targets, return_stats=True)
    assert float(default_stats["pred_weight"]) == 0.0
