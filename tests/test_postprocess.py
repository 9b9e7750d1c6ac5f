"""detection/postprocess.py: threshold, per-level top-k, class-wise NMS, cap and rescale."""

import torch
from torchvision.ops import box_iou

from dynamic_atss.config import AnchorConfig, HeadConfig, ModelConfig, TestConfig
from dynamic_atss.detection.anchors import AnchorGenerator
from dynamic_atss.detection.heads import build_head
from dynamic_atss.detection.postprocess import postprocess


def test_postprocess_caps_and_sorts():
    torch.manual_seed(1)
    num_classes = 4
    sizes = [(16, 16), (8, 8)]
    anchors, counts = AnchorGenerator(AnchorConfig(strides=(8, 16)))(sizes, torch.device("cpu"))
    head = build_head(ModelConfig(num_classes=num_classes, anchors=AnchorConfig(strides=(8, 16)),
                                  head=HeadConfig(channels=8, num_groups=8, num_convs=1)))
    flat = [{"cls_logits": torch.randn(2, n, num_classes), "box_deltas": torch.randn(2, n, 4) * 0.1,
             "quality_logits": torch.randn(2, n, 1)} for n in counts]
    test = TestConfig(score_thresh=0.05, pre_nms_topk=1000, nms_thresh=0.6, max_detections=100)
    out = postprocess(head, flat, list(anchors.split(counts)), [8, 16], torch.tensor([[128, 128], [100, 60]]), test)
    for det, (h, w) in zip(out, [(128, 128), (100, 60)], strict=True):
        assert 0 < len(det["scores"]) <= 100
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
        assert (det["boxes"][:, 2] <= w).all() and (det["boxes"][:, 3] <= h).all()
        assert ((det["boxes"][:, 2:] - det["boxes"][:, :2]) > 0).all()  # zero-area boxes removed
        # no two kept boxes of one class overlap more than the NMS threshold
        for label in det["labels"].unique():
            b = det["boxes"][det["labels"] == label]
            iou = box_iou(b, b).fill_diagonal_(0)
            assert (iou <= 0.6 + 1e-6).all()
    # max_detections binds when there are more candidates
    out = postprocess(head, flat, list(anchors.split(counts)), [8, 16], torch.tensor([[128, 128]] * 2),
                      TestConfig(score_thresh=0.0, max_detections=7))
    assert [len(d["boxes"]) for d in out] == [7, 7]
