from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from dynamic_atss.engine import NonFiniteLossError, load_config, train, trainer
from dynamic_atss.engine.checkpoint import CheckpointError, list_checkpoints
from dynamic_atss.engine.config import OptimConfig, TrainConfig
from dynamic_atss.engine.schedule import lr_factor
from dynamic_atss.typed import ConfigError
import dynamic_atss
from dynamic_atss.cli.train import main as train_main

from helpers_trainer import NO_VAL_DATA, ROOT, TINY_RECIPE, free_port, write_recipe
from hub_server import hub_server  # noqa: F401  (pytest fixture)

sys.path.insert(0, str(ROOT))

import train as train_script  # noqa: E402  (the root train.py)


def losses_by_step(log: Path) -> dict[int, dict]:
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return {r["step"]: r for r in records if "loss" in r}


def test_ten_steps_write_checkpoints_and_a_hub_model_and_report_the_ap(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "run"))
    assert train_script.main(["--config", str(recipe)]) == 0
    run = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["checkpoint-00000005", "checkpoint-00000010"]
    assert (run / "model" / "model.safetensors").is_file() and (run / "model" / "config.json").is_file()
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["model"]["backbone"]["name"] == "test_resnet" and config["model"]["num_classes"] == 6
    log = losses_by_step(run / "log.jsonl")
    assert sorted(log) == list(range(1, 11))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log.values())
    assert "assign/num_pos" in log[1] and "assign/frac_not_atss" in log[1]
    evals = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if "eval/AP" in line]
    assert len(evals) == 1 and 0.0 <= evals[0]["eval/AP"] <= 1.0
    # The end of the run prints the demo's COCO table (percent) and where the model is.
    out = capsys.readouterr().out
    ap_percent = f"{100 * evals[0]['eval/AP']:.1f}"
    assert "| AP | AP50 | AP75 | APs | APm | APl |" in out and f"| {ap_percent} |" in out
    assert f"model: {run / 'model'}" in out
    # The effective settings are printed at the start and saved beside the config.
    assert "effective settings: 1 process(es)" in out
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["effective"]["total_batch_size"] == 2 and saved["effective"]["lr"] == pytest.approx(0.01)
    assert saved["config"]["optim"]["max_iters"] == 10


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "full"))
    train(load_config(recipe))
    full = losses_by_step(tmp_path / "full" / "log.jsonl")

    # A run "killed" after step 5: its checkpoint-5 and the log up to step 5 survive.
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "checkpoint-00000005", resumed_dir / "checkpoints" / "checkpoint-00000005")
    (resumed_dir / ".tmp-checkpoint-00000010").mkdir()  # a crash during the next save leaves this behind
    train(load_config(recipe, [f"output_dir={resumed_dir}", "data.num_val=0"]), resume="latest")
    resumed = losses_by_step(resumed_dir / "log.jsonl")
    assert sorted(resumed) == [6, 7, 8, 9, 10]
    for step in resumed:
        for key in ("loss", "loss_cls", "loss_box", "loss_quality", "lr"):
            assert resumed[step][key] == pytest.approx(full[step][key], rel=1e-5, abs=1e-6), (step, key)


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "run"), **{"data": NO_VAL_DATA})
    train(load_config(recipe))
    checkpoints = list_checkpoints(tmp_path / "run" / "checkpoints")
    weights = checkpoints[-1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a crash or a full disk
    # An explicit checkpoint: the error names the file.
    with pytest.raises(CheckpointError, match=r"checkpoint-00000010/model\.safetensors has \d+ bytes"):
        train(load_config(recipe, ["optim.max_iters=12"]), resume=str(checkpoints[-1]))
    # `latest`: the newest readable one, naming the skipped file and why.
    with pytest.warns(UserWarning, match=r"skipping unreadable checkpoint checkpoint-00000010: .*model\.safetensors"):
        summary = train(load_config(recipe, ["optim.max_iters=12"]), resume="latest")
    assert summary["step"] == 12
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # resumed from step 5: the rows of the re-run steps 6-10 are not kept twice


def test_non_finite_losses_are_skipped_then_stop(tmp_path, monkeypatch):
    from dynamic_atss.detection.heads.atss import ATSSHead

    original = ATSSHead.loss

    def nan_loss(self, *args, **kwargs):
        losses, stats = original(self, *args, **kwargs)
        losses["loss_box"] = losses["loss_box"] * float("nan")
        return losses, stats

    monkeypatch.setattr(ATSSHead, "loss", nan_loss)
    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "nan"), max_bad_steps=3)
    with pytest.warns(UserWarning, match="non-finite loss"), pytest.raises(NonFiniteLossError, match="3 consecutive"):
        train(load_config(recipe))


def test_a_non_finite_batch_leaves_batchnorm_intact_and_the_model_still_detects(tmp_path, monkeypatch):
    """The demo's trainable BatchNorm: a NaN image (caught before the forward) and a NaN activation (caught by
    the loss, the running statistics restored) must not leave NaN running statistics behind."""

    calls = {"collate": 0, "forward": 0}

    def collate_with_a_nan_image(batch):
        images, targets = trainer.collate_fn.__wrapped__(batch)
        calls["collate"] += 1
        if calls["collate"] == 2:
            images[0] = images[0] * float("nan")
        return images, targets

    collate_with_a_nan_image.__wrapped__ = trainer.collate_fn
    monkeypatch.setattr(trainer, "collate_fn", collate_with_a_nan_image)
    original_build_model = trainer.build_model

    def build_model_with_a_nan_activation(*args, **kwargs):
        model = original_build_model(*args, **kwargs)
        first_bn = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))

        def hook(module, inputs, output):
            if module.training:
                calls["forward"] += 1
                if calls["forward"] == 3:
                    return output * float("nan")  # every later BatchNorm sees NaN in this forward
            return output

        first_bn.register_forward_hook(hook)
        return model

    monkeypatch.setattr(trainer, "build_model", build_model_with_a_nan_activation)
    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "run"), checkpoint_every=0,
                          model_overrides={**TINY_RECIPE["model_overrides"], "test.score_thresh": 0.0},
                          optim={**TINY_RECIPE["optim"], "max_iters": 5})
    with pytest.warns(UserWarning) as caught:
        train(load_config(recipe))
    import dynamic_atss

    model = dynamic_atss.create(f"local-dir:{tmp_path / 'run' / 'model'}").eval()
    bn_buffers = [b for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for b in m.buffers()]
    assert bn_buffers and all(torch.isfinite(b.float()).all() for b in bn_buffers)
    with torch.no_grad():
        detections = model([torch.rand(3, 128, 128)])[0]
    assert len(detections["scores"]) > 0 and torch.isfinite(detections["scores"]).all()
    messages = [str(w.message) for w in caught]
    assert any("non-finite input values" in m for m in messages) and any("non-finite loss" in m for m in messages)


def test_a_window_without_positives_warns(tmp_path, monkeypatch):
    from dynamic_atss.detection.heads.atss import ATSSHead

    original = ATSSHead.loss

    def no_positives(self, *args, **kwargs):
        losses, stats = original(self, *args, **kwargs)
        stats["num_pos"] = stats["num_pos"] * 0  # as if every image were empty or crowd-only
        return losses, stats

    monkeypatch.setattr(ATSSHead, "loss", no_positives)
    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "run"), checkpoint_every=0, log_every=2,
                          optim={**TINY_RECIPE["optim"], "max_iters": 2}, data=NO_VAL_DATA)
    with pytest.warns(UserWarning, match=r"steps 1-2: no positive anchor in any image"):
        train(load_config(recipe))


# ---------------------------------------------------------------------------------------------- processes
LR_RECIPE = {"warmup_iters": 3, "max_iters": 8, "steps": [5, 7], "lr": 0.01, "base_batch_size": 2}


def lrs_by_step(log: Path) -> dict[int, float]:
    return {step: record["lr"] for step, record in losses_by_step(log).items()}


@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None, reason="accelerate CLI missing")
def test_two_processes_follow_the_one_process_lr_schedule(tmp_path):
    """A real 2-process CPU launch (gloo) with 1 image per process = the 1-process run with 1 image and 2
    accumulation steps: the same total batch, so the same LR at every optimizer step."""
    optim = {**TINY_RECIPE["optim"], **LR_RECIPE}
    common = {"batch_size": 1, "checkpoint_every": 4, "optim": optim, "data": {**NO_VAL_DATA, "num_train": 16}}
    one = write_recipe(tmp_path / "one.yaml", output_dir=str(tmp_path / "one"), grad_accum=2, **common)
    train(load_config(one))

    two = write_recipe(tmp_path / "two.yaml", output_dir=str(tmp_path / "two"), **common)
    accelerate = str(Path(sys.executable).parent / "accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    env.pop("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", None)
    result = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", str(free_port()), str(ROOT / "tests" / "ddp_probe.py"),
         str(tmp_path / "ranks"), "--config", str(two)],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    views = [json.loads(p.read_text()) for p in sorted((tmp_path / "ranks").glob("rank*.json"))]
    assert [v["rank"] for v in views] == [0, 1], "two processes must really have run"
    assert all(v["world_size"] == 2 and v["num_processes"] == 2 and v["distributed_type"] == "MULTI_CPU" for v in views)
    one_lrs, two_lrs = lrs_by_step(tmp_path / "one" / "log.jsonl"), lrs_by_step(tmp_path / "two" / "log.jsonl")
    assert two_lrs == pytest.approx(one_lrs)
    config = OptimConfig(**{**LR_RECIPE, "steps": tuple(LR_RECIPE["steps"])})
    expected = {step: 0.01 * lr_factor(step - 1, config) for step in range(1, 9)}  # the LR each step used
    assert one_lrs == pytest.approx(expected)
    effective = json.loads((tmp_path / "two" / "train_config.json").read_text())["effective"]
    assert effective["num_processes"] == 2 and effective["total_batch_size"] == 2
    assert (tmp_path / "two" / "checkpoints" / "checkpoint-00000008").is_dir()
    assert (tmp_path / "two" / "model" / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------- Accelerate settings
@pytest.fixture
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    # The state is a process-wide singleton; these tests change its settings (private reset, tests only).
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_accelerate_launch_settings_win_unless_the_recipe_sets_them(tmp_path, monkeypatch, fresh_accelerate_state):
    from dynamic_atss.engine.trainer import make_accelerator

    # What `accelerate launch --mixed_precision bf16 --gradient_accumulation_steps 2` passes to the script.
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "2")
    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "run"), checkpoint_every=0,
                          optim={**TINY_RECIPE["optim"], "max_iters": 2}, data=NO_VAL_DATA)
    train(load_config(recipe))
    effective = json.loads((tmp_path / "run" / "train_config.json").read_text())["effective"]
    assert effective["mixed_precision"] == "bf16" and effective["grad_accum"] == 2
    assert effective["total_batch_size"] == 4 and effective["lr"] == pytest.approx(0.02)  # 0.01 x 4 / 2
    assert losses_by_step(tmp_path / "run" / "log.jsonl")[1]["lr"] == pytest.approx(0.02 / 3)  # warm-up from 1/3

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    explicit = load_config(recipe, ["mixed_precision=no", "grad_accum=2"])  # the same value as the launcher's
    accelerator = make_accelerator(explicit)
    assert accelerator.mixed_precision == "no" and accelerator.gradient_accumulation_steps == 2
    # a recipe value that contradicts the launcher's is refused, not silently preferred
    with pytest.raises(ConfigError, match="grad_accum = 3 in the recipe but the launcher sets "
                                          "ACCELERATE_GRADIENT_ACCUMULATION_STEPS=2"):
        make_accelerator(load_config(recipe, ["grad_accum=3"]))
    AcceleratorState._reset_state(reset_partial_state=True)
    monkeypatch.delenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
    assert make_accelerator(load_config(recipe, ["grad_accum=3"])).gradient_accumulation_steps == 3


def test_trackers_get_the_full_config(tmp_path, monkeypatch):
    captured = {}

    def init_trackers(self, project_name, config=None, init_kwargs=None):
        captured.update(project=project_name, config=config)

    monkeypatch.setattr(trainer.Accelerator, "init_trackers", init_trackers)
    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "run"), checkpoint_every=0,
                          optim={**TINY_RECIPE["optim"], "max_iters": 1}, data=NO_VAL_DATA, tracker="tensorboard")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # accelerate may say that the tracker's package is not installed
        train(load_config(recipe))
    logged = captured["config"]
    assert captured["project"] == "dynamic_atss"
    assert logged["optim.lr"] == 0.01 and logged["model_overrides.head.channels"] == 32
    assert logged["effective.total_batch_size"] == 2 and logged["data.image_size"] == "[128, 128]"
    assert all(isinstance(v, (int, float, str, bool)) for v in logged.values())


def test_init_from_a_name_without_weights_refuses_instead_of_training_random_weights():
    from dynamic_atss.engine.trainer import build_model
    from dynamic_atss.registry import NoPretrainedWeightsError

    with pytest.raises(NoPretrainedWeightsError, match="has no published weights"):
        build_model(TrainConfig(init_from="dynamic_atss_r50"), 3, ["a", "b", "c"])


def test_one_all_reduce_per_micro_batch_and_targets_stay_on_the_host(tmp_path, monkeypatch):
    """The training step's one host-device synchronisation: a single all-reduce + read per micro-batch (inputs and
    loss finite together); the model receives the targets on the host (checked there, no device involved)."""
    decisions, target_devices = [], set()
    original_agree = trainer._agree

    def counting(accelerator, flag, stop_signal):
        decisions.append(1)
        return original_agree(accelerator, flag, stop_signal)

    monkeypatch.setattr(trainer, "_agree", counting)
    original_build_model = trainer.build_model

    def build_model_recording_targets(*args, **kwargs):
        model = original_build_model(*args, **kwargs)
        model.register_forward_pre_hook(
            lambda module, args: target_devices.update(t["boxes"].device.type for t in args[1]) if len(args) > 1 else None)
        return model

    monkeypatch.setattr(trainer, "build_model", build_model_recording_targets)
    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "run"), checkpoint_every=0, log_every=100,
                          optim={**TINY_RECIPE["optim"], "max_iters": 3}, data=NO_VAL_DATA)
    train(load_config(recipe))
    assert len(decisions) == 3  # 3 micro-batches (no accumulation)
    assert target_devices == {"cpu"}


def test_the_trainer_passes_progress_and_reads_the_returned_statistics():
    """Training state is passed, not set: no `model.train_progress =` and no `model.assign_stats` read."""
    import ast
    import inspect

    source = ast.parse(inspect.getsource(trainer))
    attributes = {node.attr for node in ast.walk(source) if isinstance(node, ast.Attribute)}
    assert not {"train_progress", "assign_stats", "assigner"} & attributes


# ---------------------------------------------------------------------------------------------- issue 18: no run lost
class _FirstImageNaN(torch.utils.data.Dataset):
    """The training set with a NaN image at index 0 (a bad sample); records which indices were read."""

    def __init__(self, dataset, reads):
        self.dataset, self.reads = dataset, reads

    def __len__(self):
        return len(self.dataset)

    def __getattr__(self, name):
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index):
        self.reads.append(index)
        image, target = self.dataset[index]
        return (image * float("nan") if index == 0 else image), target


def test_a_bad_sample_is_skipped_once_and_the_run_goes_on_and_resumes_exactly(tmp_path, monkeypatch):
    """Issue 18, item 1: the batch holding the NaN image is skipped and the data moves on (each index read once
    per epoch), instead of re-reading it until `max_bad_steps` stops the run; resuming after a skip continues
    with the same batches as the uninterrupted run."""
    reads: list[int] = []
    build = trainer.build_datasets
    monkeypatch.setattr(trainer, "build_datasets",
                        lambda config, seed: (lambda sets: (_FirstImageNaN(sets[0], reads), sets[1]))(build(config, seed)))
    data = {**NO_VAL_DATA, "num_train": 8}
    optim = {**TINY_RECIPE["optim"], "max_iters": 6, "steps": [5]}
    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "full"), data=data, optim=optim,
                          checkpoint_every=2)
    with pytest.warns(UserWarning, match="non-finite input values; skipping this batch") as caught:
        summary = train(load_config(recipe))
    assert summary["step"] == 6 and (tmp_path / "full" / "model" / "model.safetensors").is_file()
    # 6 steps from 4 batches per epoch with one skipped: each image of the first epoch read once, none more than
    # twice in all (the loader reads one batch ahead)
    assert sorted(reads[:8]) == list(range(8)) and max(reads.count(i) for i in range(8)) <= 2
    assert [str(w.message) for w in caught if "skipping" in str(w.message)] == [
        "step 1: non-finite input values; skipping this batch (the model is unchanged)"]
    full = losses_by_step(tmp_path / "full" / "log.jsonl")

    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    # the run killed after step 4 (epoch 2, its first batch: the skipped batch put it one batch past 4 x 1)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "checkpoint-00000004",
                    resumed_dir / "checkpoints" / "checkpoint-00000004")
    train(load_config(recipe, [f"output_dir={resumed_dir}"]), resume="latest")
    resumed = losses_by_step(resumed_dir / "log.jsonl")
    assert sorted(resumed) == [5, 6]
    for step in resumed:
        assert resumed[step]["loss"] == pytest.approx(full[step]["loss"], rel=1e-5, abs=1e-6), step


def test_push_to_hub_is_checked_before_training(tmp_path, monkeypatch, capsys, refuse):
    """Issue 18, item 3: an unreachable Hub, a missing token or a bad repo id stop the run before anything is
    trained or claimed (exit 2, one line)."""
    import huggingface_hub

    refuse(trainer, "build_datasets")
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nobody listens
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "run"))
    for repo, message in (("org/name", "the Hub at http://127.0.0.1:"), ("bad name!", "is not a Hub repo id"),
                          ("name", "give the owner too, as org/name")):
        assert train_script.main(["--config", str(recipe), "--push-to-hub", repo]) == 2
        err = capsys.readouterr().err
        assert err.startswith("dynamic-atss train: error: --push") and message in err and "Traceback" not in err
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored token either
    assert train_script.main(["--config", str(recipe), "--push-to-hub", "org/name"]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_push_that_fails_after_training_keeps_the_model_and_says_how_to_push_it(tmp_path, monkeypatch, capsys,
                                                                                   hub_server):  # noqa: F811
    """Issue 18, item 3: the Hub answers before training, then goes away: the model stays saved, the final report
    is printed with the command that pushes it later, and the exit status is 1."""
    import huggingface_hub

    from dynamic_atss.hub import push

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub_server.endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    original = push.push_model_dir

    def hub_gone(*args, **kwargs):
        hub_server.stop()
        return original(*args, **kwargs)

    monkeypatch.setattr(push, "push_model_dir", hub_gone)
    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "run"), checkpoint_every=0,
                          optim={**TINY_RECIPE["optim"], "max_iters": 2})
    assert train_script.main(["--config", str(recipe), "--push-to-hub", "org/tiny"]) == 1
    out = capsys.readouterr().out
    model_dir = tmp_path / "run" / "model"
    assert (model_dir / "model.safetensors").is_file()
    assert "| AP | AP50 |" in out and "pushing to org/tiny failed" in out
    assert f"push it later with:\n  dynamic-atss push --model {model_dir} --repo org/tiny" in out


def test_resume_without_a_checkpoint_is_one_clear_line(tmp_path, capsys):
    """Issue 18, item 15: `--resume latest` with no checkpoint, `--resume /bad/path`: exit 2, one line, no claim."""
    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "run"))
    for resume, message in (("latest", "--resume latest: no complete checkpoint in"),
                            (str(tmp_path / "bad" / "path"), "not a complete checkpoint folder")):
        assert train_script.main(["--config", str(recipe), "--resume", resume]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "run" / "train_config.json").exists()


def _demo_model_folder(path: Path) -> None:
    """A model saved with the architecture of the `demo_cpu` recipe (as `make demo` leaves in outputs/demo/model)."""
    demo = {"backbone": "resnet10t", "backbone.norm": "bn", "backbone.frozen_stages": -1, "fpn_channels": 64,
            "head.channels": 64, "head.num_groups": 16, "head.num_convs": 2, "min_size": 96, "max_size": 96}
    dynamic_atss.create("r50", num_classes=3, **demo).save_pretrained(path)


def test_init_from_accepts_a_recipe_that_restates_the_checkpoint(tmp_path):
    """`--config demo_cpu --init_from <a demo model>`: every architecture field equals the checkpoint's."""
    from dynamic_atss.engine.config import load_config  # noqa: PLC0415
    from dynamic_atss.engine.trainer import build_model  # noqa: PLC0415

    _demo_model_folder(tmp_path / "demo")
    config = load_config("demo_cpu", [f"init_from=local-dir:{tmp_path / 'demo'}"])
    with pytest.warns(UserWarning, match="classification layer"):
        model = build_model(config, 1, ["tree"])  # the class count and names come from the data
    assert model.config.num_classes == 1 and model.config.class_names == ["tree"]
    assert model.config.head.channels == 64 and model.config.backbone.name == "resnet10t"


def test_init_from_refuses_a_differing_architecture_field(tmp_path, capsys):
    _demo_model_folder(tmp_path / "demo")
    code = train_main(["--config", "demo_cpu", "--init_from", f"local-dir:{tmp_path / 'demo'}",
                       "--model_overrides.head.channels", "32", "--output_dir", str(tmp_path / "run"),
                       "--data.num_train", "2", "--data.num_val", "0", "--data.image_size", "64,64"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "head.channels: checkpoint 64, requested 32" in err


# ------------------------------------------------------------------------------------------------------- preemption
def read_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def run_probe(tmp_path: Path, recipe: Path, signal_name: str, at_step: int, processes: int = 1, sender: int = 0,
              extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """The training command in a new process group, in which rank `sender` signals the group after `at_step`."""
    probe = [str(ROOT / "tests" / "signal_probe.py"), str(tmp_path / "ranks"), signal_name, str(at_step), str(sender),
             "--config", str(recipe), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, *probe]
    else:
        env["ACCELERATE_USE_CPU"] = "1"
        command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(free_port()), *probe]
    env.pop("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", None)
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
                          start_new_session=True)


@pytest.mark.parametrize("signal_name, status", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_finishes_the_step_checkpoints_unlocks_and_resume_ends_bit_identical(tmp_path, signal_name, status):
    common = {"checkpoint_every": 0, "data": NO_VAL_DATA, "optim": {**TINY_RECIPE["optim"], "max_iters": 6}}
    full = write_recipe(tmp_path / "full.yaml", output_dir=str(tmp_path / "full"), **common)
    assert run_probe(tmp_path, full, signal_name, at_step=99).returncode == 0  # never signalled
    stopped_dir = tmp_path / "stopped"
    stopped = write_recipe(tmp_path / "stopped.yaml", output_dir=str(stopped_dir), **common)
    result = run_probe(tmp_path, stopped, signal_name, at_step=2)
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"stopped by {signal_name} after step 3" in result.stdout and "--resume latest" in result.stdout
    assert [p.name for p in list_checkpoints(stopped_dir / "checkpoints")] == ["checkpoint-00000003"]
    assert not (stopped_dir / ".lock").exists() and not (stopped_dir / "model").exists()
    # `--resume latest` (the same recipe) ends with the weights of the run that was never stopped, bit for bit.
    result = run_probe(tmp_path, stopped, signal_name, at_step=99, extra=("--resume", "latest"))
    assert result.returncode == 0, result.stderr[-3000:]
    expected, resumed = read_weights(tmp_path / "full" / "model"), read_weights(stopped_dir / "model")
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)


def test_two_processes_stop_at_the_same_step_and_resume_bit_identical(tmp_path):
    """Rank 1 signals the group (launcher and both ranks) after step 2: both ranks agree to stop after step 3. With
    EMA on: the saved model is the average, which resumes exactly too."""
    common = {"checkpoint_every": 0, "batch_size": 1, "data": {**NO_VAL_DATA, "num_train": 16},
              "optim": {**TINY_RECIPE["optim"], "max_iters": 5}, "ema": {"enabled": True, "decay": 0.9, "tau": 2.0}}
    full = write_recipe(tmp_path / "full.yaml", output_dir=str(tmp_path / "full"), **common)
    result = run_probe(tmp_path, full, "SIGTERM", at_step=99, processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    stopped_dir = tmp_path / "stopped"
    stopped = write_recipe(tmp_path / "stopped.yaml", output_dir=str(stopped_dir), **common)
    shutil.rmtree(tmp_path / "ranks")
    result = run_probe(tmp_path, stopped, "SIGTERM", at_step=2, processes=2, sender=1)
    views = [json.loads(p.read_text()) for p in sorted((tmp_path / "ranks").glob("rank*.json"))]
    assert [(v["rank"], v["world_size"], v["step"], v["exit_status"]) for v in views] == [(0, 2, 3, 143), (1, 2, 3, 143)], \
        result.stderr[-3000:]
    assert "--resume latest" in result.stdout
    assert [p.name for p in list_checkpoints(stopped_dir / "checkpoints")] == ["checkpoint-00000003"]
    assert not (stopped_dir / ".lock").exists()
    result = run_probe(tmp_path, stopped, "SIGTERM", at_step=99, processes=2, extra=("--resume", "latest"))
    assert result.returncode == 0, result.stderr[-3000:]
    expected, resumed = read_weights(tmp_path / "full" / "model"), read_weights(stopped_dir / "model")
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)


# --------------------------------------------------------------------------------------------- failures leave no claim
def test_a_failed_init_from_leaves_no_lock_and_no_folder(tmp_path):
    """Issue 25: a run whose `--init_from` folder is missing leaves neither `.lock` nor the folder it would have
    made; in an existing folder, only what was there before. (How the error reads is the command's business.)"""
    missing = f"local-dir:{tmp_path / 'no_such_model'}"
    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "run"), data=NO_VAL_DATA, init_from=missing)
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        train(load_config(recipe))
    assert not (tmp_path / "run").exists()
    (tmp_path / "existing").mkdir()
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        train(load_config(recipe, [f"output_dir={tmp_path / 'existing'}"]))
    assert list((tmp_path / "existing").iterdir()) == []


def test_a_full_disk_while_checkpointing_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys,
                                                                                         monkeypatch):
    import errno

    from accelerate import Accelerator

    original_save_state, calls = Accelerator.save_state, []

    def save_state_until_the_disk_is_full(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:  # the second checkpoint: a partial file, then the disk is full
            Path(output_dir, "model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original_save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_state_until_the_disk_is_full)
    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "run"), data=NO_VAL_DATA)
    assert train_main(["--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("train:")]  # not tqdm's bar
    assert len(lines) == 1 and lines[0].startswith("dynamic-atss train: error: ") and "Traceback" not in err
    assert "checkpoint-00000010" in err and "No space left on device" in err and "--resume latest" in err
    checkpoints = tmp_path / "run" / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["checkpoint-00000005"]  # no .tmp-checkpoint-* left
    assert not (tmp_path / "run" / ".lock").exists()
