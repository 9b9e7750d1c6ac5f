"""Your own dataset to a shared model: the README's commands, run as written, on a tiny dataset this test writes.

The commands are read from the README's "Your own dataset" section (so the documentation and the test cannot
drift); the test appends only what makes them tiny and offline (a saved tiny model as `--init_from`, a few
iterations at 64-96 px) and points the Hub client at the loopback server of `hub_server.py`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from huggingface_hub import ModelCard

import dynamic_atss

from helpers_trainer import free_port
from hub_server import hub_server  # noqa: F401  (pytest fixture)

ROOT = Path(__file__).resolve().parents[1]
TINY = {"backbone": "test_resnet", "fpn_channels": 32, "head.channels": 32, "head.num_groups": 8, "min_size": 64,
        "max_size": 96}
# What makes the README's runs tiny and offline; later overrides win over the README's own values.
TEST_OVERRIDES = ["--optim.max_iters", "2", "--optim.warmup_iters", "1", "--optim.steps", "[100]", "--eval_every", "0",
                  "--checkpoint_every", "0", "--data.num_workers", "0", "--model_overrides.min_size", "64",
                  "--model_overrides.max_size", "96", "--tracker", "none"]


def readme_commands() -> list[str]:
    """The shell commands of the README's "Your own dataset" section, in order (comments dropped)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Your own dataset", 1)[1].split("\n## ", 1)[0].split("### From transformers", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                commands.append(line)
    return commands


def write_image(path: Path, boxes: list[list[float]], size: tuple[int, int] = (80, 64)) -> None:
    """A dark image with bright rectangles where the boxes are."""
    array = np.full((size[1], size[0], 3), 30, dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        array[int(y0):int(y1), int(x0):int(x1)] = (200, 180, 40)
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(array).save(path, quality=95)


BOXES = [[[8, 8, 40, 40]], [[30, 10, 70, 50], [4, 30, 24, 60]], [[10, 20, 50, 60]], [[40, 4, 76, 36]]]
LABELS = [[0], [1, 0], [1], [0]]


def write_coco_folder(root: Path) -> None:
    """`my_dataset/{train,val}/N.jpg` + `{train,val}.json`: two categories, "tree" (id 1) and "bush" (id 2)."""
    for split, indices in (("train", range(4)), ("val", range(2))):
        images, annotations = [], []
        for i in indices:
            write_image(root / split / f"{i}.jpg", BOXES[i])
            images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": 80, "height": 64})
            for box, label in zip(BOXES[i], LABELS[i]):
                x0, y0, x1, y1 = box
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": label + 1,
                                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        categories = [{"id": 1, "name": "tree"}, {"id": 2, "name": "bush"}]
        (root / f"{split}.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                        "categories": categories}))


def write_hf_dataset(path: Path, coco_root: Path) -> None:
    """A `save_to_disk` DatasetDict (train, validation) with one class, "tree"."""
    import datasets  # noqa: PLC0415

    features = datasets.Features({
        "image": datasets.Image(),
        "objects": {"bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
                    "category": datasets.List(datasets.ClassLabel(names=["tree"]))},
    })

    def rows(indices: range, split: str) -> dict[str, list]:
        return {"image": [PIL.Image.open(coco_root / split / f"{i}.jpg").convert("RGB") for i in indices],
                "objects": [{"bbox": [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in BOXES[i]],
                             "category": [0] * len(BOXES[i])} for i in indices]}

    datasets.DatasetDict(
        train=datasets.Dataset.from_dict(rows(range(4), "train"), features=features),
        validation=datasets.Dataset.from_dict(rows(range(2), "val"), features=features),
    ).save_to_disk(str(path))


def run_command(command: str, cwd: Path, env: dict[str, str], extra: list[str]) -> subprocess.CompletedProcess:
    """One README command: `dynamic-atss` and `accelerate` from this interpreter's environment, N = 2 CPU
    processes (a free port, so parallel test runs do not collide)."""
    argv = shlex.split(command)
    if argv[0] == "dynamic-atss":
        argv = [sys.executable, "-m", "dynamic_atss", *argv[1:]]
    elif argv[0] == "accelerate":
        argv = [str(Path(sys.executable).parent / "accelerate"), "launch", "--main_process_port", str(free_port()),
                *["2" if a == "N" else a for a in argv[2:]]]
    else:
        raise AssertionError(f"unexpected command in the README: {command}")
    return subprocess.run([*argv, *extra], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_readme_own_dataset_commands_fine_tune_evaluate_push_and_load(tmp_path, hub_server):  # noqa: F811
    commands = readme_commands()
    assert len(commands) == 5, commands
    install, train_coco, predict, train_hf, train_ddp = commands
    assert install.startswith("pip install -e") and "[transformers]" in install  # not run: the test runs in-tree
    assert "--config finetune" in train_coco and "--push-to-hub my-org/my-detector" in train_coco
    assert train_ddp.startswith("accelerate launch --multi_gpu --num_processes N -m dynamic_atss train ")

    write_coco_folder(tmp_path / "my_dataset")
    write_hf_dataset(tmp_path / "my-org" / "my-dataset", tmp_path / "my_dataset")
    torch.manual_seed(0)
    base = dynamic_atss.create("r50", num_classes=3, class_names=["a", "b", "c"], **TINY)
    base.save_pretrained(tmp_path / "base")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_ENDPOINT": hub_server.endpoint, "HF_TOKEN": "hf_test_token", "HF_HOME": str(tmp_path / "hf-home"),
           "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    extra = ["--init_from", f"local-dir:{tmp_path / 'base'}", *TEST_OVERRIDES]

    for command, repo, classes in ((train_coco, "my-org/my-detector", ["tree", "bush"]),
                                   (train_hf, "my-org/my-hf-detector", ["tree"]),
                                   (train_ddp, "my-org/my-detector-ddp", ["tree", "bush"])):
        result = run_command(command, tmp_path, env, extra)
        assert result.returncode == 0, f"{command}\n{result.stderr[-4000:]}"
        assert "| AP | AP50 |" in result.stdout  # evaluated on the validation split
        assert repo in hub_server.repos, f"{command}: nothing pushed"
        output = tmp_path / command.split("--output_dir ")[1].split()[0] / "model"
        local = dynamic_atss.create(f"local-dir:{output}", **{"test.score_thresh": 0.0}).eval()
        pushed = dynamic_atss.create(f"hf-hub:{repo}", endpoint=hub_server.endpoint,
                                     cache_dir=tmp_path / "cache", **{"test.score_thresh": 0.0}).eval()
        assert pushed.config.class_names == classes and pushed.config.num_classes == len(classes)
        image = torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            (got,), (want,) = pushed([image]), local([image])
        assert len(want["boxes"]) > 0
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(got[key], want[key]), key
        repo_files = hub_server.repos[repo].resolve("main").files
        card = repo_files["README.md"].decode()
        assert "coco" not in card.lower(), card  # trained and measured on the user's data, never COCO
        assert str(tmp_path) not in card and "outputs/" not in card  # no local paths
        published = repo_files["config.json"].decode()  # the recipe keeps names, never the trainer's folders
        assert str(tmp_path) not in published and json.loads(published)["recipe"]["data"]["name"]
        assert f"{len(classes)} class{'es' if len(classes) > 1 else ''}:" in card
        data = ModelCard(card).data.to_dict()
        split = "validation" if "hf" in repo else "val"
        results = data["model-index"][0]["results"][0]
        assert results["dataset"]["split"] == split
        assert results["dataset"]["name"] == ("my-dataset" if "hf" in repo else "my_dataset")
        assert "datasets" not in data  # local data: no Hub dataset page to link to

    result = run_command(predict, tmp_path, env, [])
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "predictions" / "detections.json").read_text())[0]["image"].endswith("0.jpg")


# ------------------------------------------------------------------------------------------------ issue 25
def test_an_init_from_that_does_not_exist_is_one_line(tmp_path):
    """`train --init_from ./nope` was 31 lines of traceback."""
    from helpers_cli import one_line_error, run_installed

    result = run_installed("train", "--config", "demo_cpu", "--init_from", "./nope", "--output_dir",
                           str(tmp_path / "run"), cwd=tmp_path)
    one_line_error(result, "train", "./nope")


def test_a_misspelt_model_name_suggests_real_names():
    """`create('r51')` suggested `['r50', 'r101', '_r50', '_r50']` (names cut by the prefix length, duplicated)."""
    import pytest

    with pytest.raises(ValueError) as error:
        dynamic_atss.create("r51")
    suggested = str(error.value).split("closest:", 1)[1]
    assert "'_r50'" not in suggested and suggested.count("'r50'") <= 1
