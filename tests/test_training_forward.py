import pytest
import torch

import dynamic_atss as da
from dynamic_atss.data import SyntheticShapes


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
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        history.append(float(sum(losses.values()).detach()))
    assert history[-1] < 0.5 * history[0], history[::10]
    assert float(model.assign_stats["num_pos"]) > 0


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
