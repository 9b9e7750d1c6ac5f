"""The package installs as a tool: recipes, LICENSE and entry points in the wheel; dependency floors hold."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from dynamic_atss.engine.config import RECIPES_DIR

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Distribution name -> the module it provides, where they differ.
IMPORT_NAMES = {"pyyaml": "yaml", "pillow": "PIL", "huggingface-hub": "huggingface_hub"}


def _requirements() -> list[Requirement]:
    return [Requirement(line) for line in PYPROJECT["project"]["dependencies"]]


def test_dependency_floors_are_installed_and_import():
    for requirement in _requirements():
        version = importlib.metadata.version(requirement.name)
        assert requirement.specifier.contains(version, prereleases=True), f"{requirement}: installed {version}"
        module = IMPORT_NAMES.get(requirement.name.lower().replace("_", "-"), requirement.name.replace("-", "_"))
        importlib.import_module(module)


def test_no_upper_bounds_without_a_documented_incompatibility():
    """An upper bound blocks every future release; none is known to break (only public torch APIs are used)."""
    capped = [str(r) for r in _requirements() if any(s.operator in ("<", "<=", "~=", "==") for s in r.specifier)]
    assert capped == []


def test_every_third_party_import_is_a_declared_dependency():
    declared = {r.name.lower().replace("_", "-") for r in _requirements()}
    optional = {Requirement(line).name.lower() for extra in PYPROJECT["project"]["optional-dependencies"].values()
                for line in extra}
    providers = importlib.metadata.packages_distributions()
    undeclared = set()
    for path in (ROOT / "dynamic_atss").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "dynamic_atss":
                    continue
                dists = {d.lower().replace("_", "-") for d in providers.get(top, [top])}
                if not dists & (declared | optional):
                    undeclared.add(f"{top} ({path.relative_to(ROOT)})")
    assert not undeclared, f"imported but not declared in pyproject.toml: {sorted(undeclared)}"


def test_wheel_ships_recipes_license_and_the_train_command(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "outputs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("dynamic_atss-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = {f"dynamic_atss/configs/{p.relative_to(RECIPES_DIR).as_posix()}" for p in RECIPES_DIR.rglob("*.yaml")}
    assert len(recipes) > 20 and recipes <= names, sorted(recipes - names)
    assert {"dynamic_atss/cli/train.py", "dynamic_atss/model_index.json", "dynamic_atss/py.typed"} <= names
    assert "dynamic_atss/configs/finetune.yaml" in names
    assert "dynamic_atss/integrations/transformers.py" in names
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Classifier: Typing :: Typed" in metadata
    assert "Project-URL: Paper, https://arxiv.org/abs/2201.09396" in metadata
    assert "Provides-Extra: transformers" in metadata and "Provides-Extra: export" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "dynamic-atss = dynamic_atss.__main__:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_project_urls_and_extras():
    """Links that exist (no made-up pages) and one extra per optional path, each naming what the path imports."""
    urls = PYPROJECT["project"]["urls"]
    assert all(url.startswith("https://") for url in urls.values()) and "pypi.org" not in str(urls)
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {Requirement(r).name for r in extras["transformers"]} == {"transformers"}
    assert {Requirement(r).name for r in extras["export"]} == {"onnx", "onnxscript", "onnxruntime"}
    classifiers = PYPROJECT["project"]["classifiers"]
    assert "Typing :: Typed" in classifiers and (ROOT / "dynamic_atss" / "py.typed").is_file()
    minor = int(PYPROJECT["project"]["requires-python"].removeprefix(">=3."))
    assert f"Programming Language :: Python :: 3.{minor}" in classifiers


def test_root_configs_points_at_the_packaged_recipes():
    assert (ROOT / "configs").resolve() == RECIPES_DIR.resolve()
    assert (ROOT / "configs" / "demo_cpu.yaml").is_file()
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")


def test_train_module_runs_from_an_empty_directory_with_a_packaged_recipe(tmp_path):
    """`python -m dynamic_atss train --config demo_cpu` does not depend on the working directory."""
    tiny = ["--model_overrides.backbone.name", "test_resnet", "--model_overrides.fpn_channels", "16",
            "--model_overrides.head.channels", "16", "--model_overrides.head.num_groups", "4",
            "--model_overrides.min_size", "64", "--model_overrides.max_size", "64", "--data.image_size", "64,64",
            "--data.num_train", "4", "--data.num_val", "2", "--batch_size", "2", "--optim.max_iters", "2"]
    result = subprocess.run([sys.executable, "-m", "dynamic_atss", "train", "--config", "demo_cpu", "--output_dir", "run",
                             *tiny], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert "| AP | AP50 | AP75 | APs | APm | APl |" in result.stdout and "model: run/model" in result.stdout


# ------------------------------------------------------------------------------- issue 25: a lean core install
TRAINING_ONLY = ("datasets", "accelerate", "pycocotools", "pyarrow", "pandas")


def test_the_core_install_leaves_the_training_dependencies_out():
    """`pip install dynamic-atss` pulled datasets (pyarrow, pandas), accelerate and pycocotools, which only training
    and evaluation use: they are the [train] extra; the core requirements name none of them."""
    core = {r.name.lower() for r in _requirements()}
    train = {Requirement(r).name.lower() for r in PYPROJECT["project"]["optional-dependencies"]["train"]}
    assert {"accelerate", "datasets", "pycocotools"} <= train and not core & {"accelerate", "datasets", "pycocotools"}


def test_import_create_and_predict_import_no_training_dependency(tmp_path):
    """`import dynamic_atss`, `create("r50")` and a whole `dynamic-atss predict` run import none of them."""
    import torch

    from dynamic_atss.visualize import save_png

    save_png((torch.rand(3, 40, 50) * 255).to(torch.uint8), tmp_path / "img.png")
    code = f"""
import sys
import dynamic_atss
model = dynamic_atss.create("r50", backbone="test_resnet", fpn_channels=16, **{{"head.channels": 16, "head.num_groups": 4}})
model.save_pretrained({str(tmp_path / "model")!r})
from dynamic_atss.__main__ import main
assert main(["predict", {str(tmp_path / "img.png")!r}, "--model", {str(tmp_path / "model")!r}, "--out",
             {str(tmp_path / "out")!r}, "--no_progress"]) == 0
print(sorted(name for name in {TRAINING_ONLY!r} if name in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_a_training_command_without_the_extra_says_which_pip_install_to_run(monkeypatch, capsys):
    import importlib.util

    from dynamic_atss.__main__ import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a))
    assert main(["train", "--config", "demo_cpu"]) == 2
    err = capsys.readouterr().err
    assert 'needs accelerate (the training extra): run `pip install "dynamic-atss[train]"`' in err
