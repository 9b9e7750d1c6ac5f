import pytest
import torch

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
