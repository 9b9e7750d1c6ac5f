"""Saved model folders written by earlier releases keep loading, with the same outputs.

`tests/fixtures/saved_models/<name>/` hold tiny models saved by dynamic-atss at main 4751934 (format_version 1,
the flat head / loss config every family shared), one per head family, with and without the Hugging Face keys
in `config.json`, and what that version computed on fixed inputs (`expected.safetensors`, see
`make_fixtures.py` there). Loading them into the current layout must give the same raw outputs, detections and
training losses.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dynamic_atss as da
from dynamic_atss.errors import UserInputError

FIXTURES = Path(__file__).parent / "fixtures" / "saved_models"
NAMES = sorted(p.name for p in FIXTURES.iterdir() if (p / "config.json").is_file())


def _expected(name: str) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    expected = load_file(str(FIXTURES / name / "expected.safetensors"))
    count = len({key.split(".")[1] for key in expected if key.startswith("images.")})
    images = [expected[f"images.{i}"].float() / 255 for i in range(count)]
    targets = [{"boxes": expected[f"targets.{i}.boxes"], "labels": expected[f"targets.{i}.labels"]}
               for i in range(count)]
    return expected, images, targets


def test_every_family_has_a_fixture():
    families = {json.loads((FIXTURES / n / "config.json").read_text())["model"]["head"]["kind"] for n in NAMES}
    assert families == {"atss", "gfl", "vfnet"}
    assert {"dynamic_atss", "atss_mmdet", "gfl", "gflv2", "vfnet", "atss_hf"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_saved_folder_loads_with_the_same_outputs(name):
    expected, images, targets = _expected(name)
    model = da.create(FIXTURES / name)
    model.eval()
    with torch.no_grad():
        batch, _, _ = model.preprocess(images)
        raw = model.forward_raw(batch)
        for output_name, levels in zip(model.head.output_names, raw):
            for level, tensor in enumerate(levels):
                torch.testing.assert_close(tensor, expected[f"{output_name}.{level}"], rtol=0, atol=1e-5)
        assert len(raw) == len({k.split(".")[0] for k in expected if k.split(".")[-1].isdigit()
                                and not k.startswith(("images", "detections", "targets"))})
        detections = model(images)
    for index, det in enumerate(detections):
        assert len(det["boxes"]) > 0
        for key, value in det.items():
            torch.testing.assert_close(value, expected[f"detections.{index}.{key}"], rtol=0, atol=1e-5)
    model.train()
    losses = model(images, targets, progress=0.5)
    assert sorted(losses) == sorted(k.removeprefix("loss.") for k in expected if k.startswith("loss."))
    for key, value in losses.items():
        torch.testing.assert_close(value.detach(), expected[f"loss.{key}"], rtol=1e-5, atol=1e-5)


def test_a_newer_format_version_says_to_upgrade(tmp_path):
    folder = tmp_path / "newer"
    shutil.copytree(FIXTURES / "dynamic_atss", folder)
    document = json.loads((folder / "config.json").read_text())
    document["format_version"] = 99
    (folder / "config.json").write_text(json.dumps(document))
    with pytest.raises(UserInputError, match="format_version 99.*newer.*Upgrade: pip install -U dynamic-atss") as info:
        da.create(folder)
    assert "\n" not in str(info.value)
