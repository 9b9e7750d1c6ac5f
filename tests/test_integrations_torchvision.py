"""dynamic_atss.integrations.torchvision: the combined-IoU drop-in for torchvision FCOS / RetinaNet."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from dynamic_atss.detection.assigner import CombinedIoUAssigner
from dynamic_atss.errors import UserInputError
from dynamic_atss.integrations.torchvision import (
    UnsupportedModelError,
    combined_iou_assignment,
    restore_assignment,
    use_combined_iou_assignment,
)
from dynamic_atss.benchmark.torchvision_assignment import build_model

FAMILIES = ("fcos", "retinanet")
SIZE = 96


def tiny_model(family: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(family, num_classes=3, image_size=SIZE)


def batch(seed: int = 0):
    """Two 96 x 96 images: one with three GTs (two overlapping), one with none."""
    generator = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, SIZE, SIZE, generator=generator) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 30.0], [20.0, 18.0, 80.0, 90.0], [50.0, 10.0, 70.0, 28.0]]),
         "labels": torch.tensor([0, 2, 1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    return images, targets


def capture_head_loss_inputs(model):
    """Record what torchvision's `head.compute_loss` receives (the losses stay torchvision's)."""
    calls = []
    original = model.head.compute_loss

    def recording(targets, head_outputs, anchors, matched_idxs):
        calls.append((head_outputs, anchors, matched_idxs))
        return original(targets, head_outputs, anchors, matched_idxs)

    model.head.compute_loss = recording
    return calls


def decode(model, regression, anchors):
    """The model's own box coder, as torchvision's loss and post-processing use it."""
    if isinstance(model, FCOS):
        return model.head.box_coder.decode(regression, anchors.expand_as(regression))
    return torch.stack([model.head.regression_head.box_coder.decode_single(r, anchors) for r in regression])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.0, 1.0), (1.0, 0.0)])
def test_positives_equal_the_assigners_on_the_same_anchors_predictions_and_gts(family, weights):
    model = tiny_model(family)
    with torch.no_grad():  # larger predicted boxes than at init, so that predicted IoUs vary
        model.head.regression_head.bbox_reg.bias.fill_(0.5)
    pred_weight, anchor_weight = weights
    use_combined_iou_assignment(model, pred_weight=pred_weight, anchor_weight=anchor_weight)
    calls = capture_head_loss_inputs(model)
    images, targets = batch()
    model(images, targets)
    (head_outputs, anchors, matched_idxs), = calls

    per_location = 1 if family == "fcos" else 9
    num_anchors_per_level = [(SIZE // s) ** 2 * per_location for s in (8, 16, 32)]
    scale = 8.0 if family == "fcos" else 1.0  # ATSS's 8 x stride squares for FCOS's one-stride anchors
    centre = (anchors[0][:, :2] + anchors[0][:, 2:]) / 2
    half = (anchors[0][:, 2:] - anchors[0][:, :2]) * scale / 2
    gt = torch.zeros(2, 3, 4)
    gt[0] = targets[0]["boxes"]
    expected = CombinedIoUAssigner(9, pred_weight, anchor_weight, 0.01)(
        torch.cat([centre - half, centre + half], 1), num_anchors_per_level, gt,
        torch.tensor([[True] * 3, [False] * 3]), decode(model, head_outputs["bbox_regression"].detach(), anchors[0]))
    assert torch.equal(torch.stack(matched_idxs), expected.gt_index)
    assert (expected.gt_index[0] >= 0).any() and (expected.gt_index[1] == -1).all()


def test_fcos_anchors_scaled_by_8_are_atss_anchors_of_8_strides():
    """torchvision's FCOS anchors are one stride wide; the drop-in's x8 boxes are ATSS's 8 x stride squares."""
    features = [torch.zeros(1, 1, 256 // s, 256 // s) for s in (8, 16, 32, 64, 128)]
    images = ImageList(torch.zeros(1, 3, 256, 256), [(256, 256)])
    fcos_default = AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((1.0,),) * 5)  # torchvision FCOS's
    atss = AnchorGenerator(((64,), (128,), (256,), (512,), (1024,)), ((1.0,),) * 5)
    point_boxes = fcos_default(images, features)[0]
    centre, half = (point_boxes[:, :2] + point_boxes[:, 2:]) / 2, (point_boxes[:, 2:] - point_boxes[:, :2]) * 4
    assert torch.equal(torch.cat([centre - half, centre + half], 1), atss(images, features)[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_training_step_gives_finite_torchvision_losses(family):
    model = tiny_model(family)
    plain_keys = set(model(*batch()))
    use_combined_iou_assignment(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(2):
        losses = model(*batch(step))
        assert set(losses) == plain_keys and all(torch.isfinite(v) for v in losses.values()), losses
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    images, targets = batch()
    with torch.no_grad():
        no_gt = model(images, [targets[1], targets[1]])  # a batch without any GT: every anchor negative
    assert all(torch.isfinite(v) for v in no_gt.values()) and no_gt["bbox_regression"].item() == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_without_it_or_after_the_undo_the_losses_are_torchvisions_bit_for_bit(family):
    untouched, undone, scoped = tiny_model(family), tiny_model(family), tiny_model(family)
    images, targets = batch()
    reference = untouched(images, targets)
    with_drop_in = use_combined_iou_assignment(undone)(images, targets)
    assert not all(torch.equal(reference[k], with_drop_in[k]) for k in reference)  # it did change the positives
    restore_assignment(undone)
    with combined_iou_assignment(scoped, pred_weight=0.0):
        scoped(images, targets)
    for model in (undone, scoped):
        assert "compute_loss" not in vars(model) and not model.head._forward_pre_hooks
        losses = model(images, targets)
        assert all(torch.equal(reference[k], losses[k]) for k in reference)


@pytest.mark.parametrize("family", FAMILIES)
def test_state_dict_keys_and_inference_outputs_stay_torchvisions(family):
    plain, dropped_in = tiny_model(family), use_combined_iou_assignment(tiny_model(family))
    assert list(plain.state_dict()) == list(dropped_in.state_dict())
    reloaded = tiny_model(family, seed=1)
    reloaded.load_state_dict(dropped_in.state_dict())  # loads as a plain torchvision model, strictly
    images, _ = batch()
    plain.eval(), dropped_in.eval(), reloaded.eval()
    with torch.no_grad():
        expected = plain(images)
        for model in (dropped_in, reloaded):
            for got, want in zip(model(images), expected):
                assert all(torch.equal(got[k], want[k]) for k in want)


def test_mistakes_are_user_errors_naming_the_fix():
    with pytest.raises(UnsupportedModelError, match="FCOS or RetinaNet") as error:
        use_combined_iou_assignment(torch.nn.Linear(2, 2))
    assert isinstance(error.value, (UserInputError, TypeError))
    model = use_combined_iou_assignment(tiny_model("fcos"))
    with pytest.raises(UnsupportedModelError, match="restore_assignment"):
        use_combined_iou_assignment(model, pred_weight=0.0)
    with pytest.raises(UnsupportedModelError, match="pred_weight='up'"):
        use_combined_iou_assignment(tiny_model("retinanet"), pred_weight="up")
    with pytest.raises(RuntimeError, match="training forward pass"):
        model.compute_loss(*batch()[1:], [], [])  # no forward pass to take the level sizes from


def _ddp_worker(rank: int, world_size: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    model = use_combined_iou_assignment(tiny_model("retinanet"))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    losses = ddp(*batch(seed=rank))  # each rank its own images
    sum(losses.values()).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    with open(f"{folder}/rank{rank}.json", "w") as f:
        json.dump({"world_size": dist.get_world_size(), "losses": {k: float(v) for k, v in losses.items()},
                   "grad_sum": float(grads.double().sum()), "grad_abs": float(grads.double().abs().sum())}, f)
    dist.destroy_process_group()


def test_two_processes_train_together_with_ddp(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert all(torch.isfinite(torch.tensor(list(r["losses"].values()))).all() for r in ranks)
    assert ranks[0]["losses"] != ranks[1]["losses"]  # different images per rank ...
    assert ranks[0]["grad_abs"] > 0
    assert ranks[0]["grad_sum"] == ranks[1]["grad_sum"]  # ... and the gradients all-reduced across both
