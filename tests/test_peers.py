"""benchmark/peers.py: torchvision's FCOS / RetinaNet as their users run them; our contestants' names."""

import pytest
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from dynamic_atss.benchmark import peers
from dynamic_atss.errors import UserInputError


def test_peer_is_configured_as_torchvision_users_run_it():
    """FrozenBatchNorm2d + frozen stem/layer1, as torchvision builds FCOS from ImageNet weights; same tensors as
    torchvision's own builder; score_thresh 0.05."""
    from torchvision.models.detection import fcos_resnet50_fpn

    peer = peers.build_peer("fcos", num_classes=80, min_size=800, max_size=1333)
    body = peer.backbone.body
    assert not any(type(m) is nn.BatchNorm2d for m in peer.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in body.modules()) == 53
    for name, param in body.named_parameters():
        assert param.requires_grad == name.startswith(("layer2", "layer3", "layer4")), name
    assert peer.score_thresh == 0.05 and peer.transform.min_size == (800,) and peer.transform.max_size == 1333

    # torchvision's builder without backbone weights trains BatchNorm2d everywhere: the reason for build_peer
    with pytest.warns(UserWarning, match="trainable_backbone_layers"):
        theirs = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=80, trainable_backbone_layers=3)
    assert any(type(m) is nn.BatchNorm2d for m in theirs.modules())
    ours_shapes = {k: v.shape for k, v in peer.state_dict().items() if "num_batches_tracked" not in k}
    theirs_shapes = {k: v.shape for k, v in theirs.state_dict().items() if "num_batches_tracked" not in k}
    assert ours_shapes == theirs_shapes

    retina = peers.build_peer("retinanet", backbone="resnet18")
    assert retina.score_thresh == 0.05
    with pytest.raises(ValueError, match="unknown peer"):
        peers.build_peer("yolo")


def test_a_bad_model_suffix_is_a_user_error():
    with pytest.raises(UserInputError, match="one at a time"):
        peers.split_spec("r50+opt+bf16")
    assert peers.split_spec("r50+onnx") == ("r50", {"onnx"})
