"""Training end to end: through the real `gentrain` command, and in-process for the trainer's behaviour."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import run_cli, train_in_process
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gentrain.checkpoint import load_checkpoint
from gentrain.config import LRSchedule
from gentrain.optim import lr_factor

QUICK = ("trainer=debug", "model.iw_samples=4", "trainer.eval_limit=100")


def event_tags(run_dir: Path) -> dict[str, list[str]]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return events.Tags()


def test_gentrain_command_writes_a_complete_run(tmp_path: Path, shared_data: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(*QUICK, "trainer.max_steps=6", "trainer.eval_every=3", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr

    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / "train.log").exists()
    log_text = (run_dir / "train.log").read_text()
    assert "data: mnist" in log_text and "test:" in log_text
    assert sorted(p.name for p in (run_dir / "samples").glob("step_*.png")) == ["step_000003.png", "step_000006.png"]
    assert (run_dir / "samples" / "reconstructions_step_000006.png").exists()
    assert (run_dir / "checkpoints" / "best.pt").exists()

    tags = event_tags(run_dir)
    for tag in ("train/neg_elbo_nats", "train/kl_nats", "train/bits_per_dim",
                "perf/images_per_sec", "perf/max_memory_mb", "val/bits_per_dim", "val/neg_elbo_nats",
                "val/active_units", "test/iw_nll_nats", "test/bits_per_dim"):
        assert tag in tags["scalars"], tag
    # No duplicates (the loss is the negative ELBO at beta = 1) and no constants (beta, a constant lr).
    assert not {"train/loss", "train/beta", "lr/model"} & set(tags["scalars"])
    assert {"images/samples", "images/reconstructions", "images/interpolations"} <= set(tags["images"])
    assert "_hparams_/experiment" in EventAccumulator(str(run_dir)).Reload().PluginTagToContent("hparams")

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 6 and metrics["main_metric"] == "bits_per_dim"
    assert math.isfinite(metrics["test"]["iw_nll_nats"]) and metrics["eval_images"] == {"val": 100, "test": 100}
    assert any("upper bound" in note for note in metrics["notes"])

    state = load_checkpoint(run_dir / "checkpoints" / "step_00000006.pt")
    assert state["step"] == 6 and state["identity"]["model"] == "vae"


def test_default_output_directory_layout(tmp_path: Path, shared_data: Path) -> None:
    result = run_cli(*QUICK, "trainer.max_steps=2", "trainer.eval_every=0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = list((tmp_path / "outputs").glob("*/*/metrics.json"))
    assert len(runs) == 1  # outputs/<date>/<time>/
    date, time = runs[0].parent.parent.name, runs[0].parent.name
    assert len(date) == 10 and date[4] == "-" and len(time) == 8


def test_vae_learns_binarized_mnist(tmp_path: Path, shared_data: Path) -> None:
    """A few hundred steps of the MLP VAE: validation bound falls and the IW bound is below the ELBO."""
    result = train_in_process(
        tmp_path, "experiment=vae_binarized_mnist", "trainer.max_steps=300", "trainer.eval_every=100",
        "trainer.eval_limit=1000", "model.iw_samples=20",
    )
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    val = [e.value for e in events.Scalars("val/neg_elbo_nats")]
    assert val[-1] < val[0] - 30, val  # nats per image
    assert result["test"]["iw_nll_nats"] < result["test"]["neg_elbo_nats"]
    assert 80 < result["test"]["neg_elbo_nats"] < 200
    assert result["test"]["active_units"] >= 5


def test_stops_at_max_epochs_and_keeps_checkpoints(tmp_path: Path, shared_data: Path) -> None:
    result = train_in_process(
        tmp_path, *QUICK, "dataset=cifar10", "trainer.max_steps=null", "trainer.max_epochs=1",
        "trainer.batch_size=400", "trainer.eval_every=3", "trainer.keep_checkpoints=2", "model.channels=[8,8]",
    )
    assert result["step"] == 9 and result["epoch"] == 1  # 3,600 training images / 400
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*.pt"))
    assert kept == ["step_00000006.pt", "step_00000009.pt"]
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["best_metric"] == min(best["best_metric"], result["val"]["bits_per_dim"])


def test_ema_weights_are_used_for_evaluation(tmp_path: Path, shared_data: Path) -> None:
    train_in_process(tmp_path, *QUICK, "trainer.max_steps=4", "trainer.ema_decay=0.5", "model.arch=mlp")
    state = load_checkpoint(tmp_path / "checkpoints" / "step_00000004.pt")
    live = [v for k, v in state["model"].items() if k.startswith("encoder_net.0.weight")][0]
    averaged = state["ema"]["shadow"][0]
    assert averaged.shape == live.shape and not torch.equal(averaged, live)


def test_bf16_autocast_on_cpu(tmp_path: Path, shared_data: Path) -> None:
    result = train_in_process(tmp_path, *QUICK, "trainer.max_steps=3", "trainer.precision=bf16", "model.arch=mlp")
    assert math.isfinite(result["val"]["bits_per_dim"])


def test_learning_rate_schedules() -> None:
    assert lr_factor(0, LRSchedule.constant, 10, 100) == pytest.approx(0.1)  # warm-up
    assert lr_factor(10, LRSchedule.cosine, 10, 110) == pytest.approx(1.0)
    assert lr_factor(60, LRSchedule.cosine, 10, 110) == pytest.approx(0.5)
    assert lr_factor(110, LRSchedule.linear, 10, 110) == pytest.approx(0.0)


def test_a_time_limit_right_after_an_evaluation_does_not_evaluate_twice(
    tmp_path: Path, shared_data: Path, monkeypatch
) -> None:
    from gentrain.evaluation import Evaluator
    from gentrain.trainer import Trainer

    calls = []
    original = Evaluator.split

    def counting(self, split_name, **kwargs):
        calls.append(split_name)
        return original(self, split_name, **kwargs)

    monkeypatch.setattr(Evaluator, "split", counting)
    # The clock runs out the moment the first evaluation (step 1) has happened.
    monkeypatch.setattr(Trainer, "_wall_minutes", lambda self: 1e9 if calls else 0.0)
    result = train_in_process(tmp_path, *QUICK, "trainer.max_steps=null", "trainer.max_minutes=1",
                              "trainer.eval_every=1", "model.arch=mlp")
    assert result["step"] == 1 and calls == ["val", "test"]


def test_early_stopping_stops_and_tests_the_best_checkpoint(tmp_path: Path, shared_data: Path, monkeypatch) -> None:
    """Validation scores 5, 4, 4.5, 4.6, 4.7 at steps 2..10 with trainer.early_stopping=3: training stops after the
    third evaluation without a better score (step 10, not the 20 planned) and the test pass scores the weights of
    step 4, best.pt."""
    from gentrain.evaluation import Evaluator

    scripted, tested = iter([5.0, 4.0, 4.5, 4.6, 4.7]), []
    original = Evaluator.split

    def split(self, split_name, **kwargs):
        result = original(self, split_name, **kwargs)
        if split_name == "val":
            return {**result, "bits_per_dim": next(scripted)}
        tested.append({k: v.clone() for k, v in self.model.state_dict().items()})
        return result

    monkeypatch.setattr(Evaluator, "split", split)
    result = train_in_process(tmp_path, *QUICK, "model.arch=mlp", "trainer.max_steps=20", "trainer.eval_every=2",
                              "trainer.early_stopping=3")
    assert result["step"] == 10 and result["best_step"] == 4 and result["val"]["bits_per_dim"] == 4.0
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["step"] == 4 and all(torch.equal(tested[0][k], v) for k, v in best["model"].items())
    final = load_checkpoint(tmp_path / "checkpoints" / "step_00000010.pt")
    assert any(not torch.equal(final["model"][k], v) for k, v in best["model"].items())


def test_slow_work_shows_seconds_per_unit_and_a_right_eta(monkeypatch) -> None:
    """A test pass of 2 expensive batches then 20 cheap ones: each part has its own line and ETA (one rate over
    both said 'ETA 16m' for a pass that took a minute), and under one unit per second the line says s/batch."""
    import gentrain.progress as progress_module
    from gentrain.progress import Progress

    now = [0.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    slow = Progress(2, "test: negative ELBO and IW bound k=100", "batch", bar=False)
    now[0] += 25.0
    slow.update()
    assert slow.line().endswith("1/2 batch (50%), 25.0 s/batch, ETA 25s")
    cheap = Progress(20, "test: negative ELBO", "batch", bar=False)
    now[0] += 0.5
    cheap.update(5)
    assert cheap.line().endswith("5/20 batch (25%), 10.0 batch/s, ETA 1.5s")
    assert Progress(3, "x", "batch", bar=False).line() == "x: 0/3 batch (0%)"  # nothing measured yet


def test_progress_lines_when_output_is_piped(tmp_path: Path, shared_data: Path) -> None:
    """No terminal (a pipe, nohup, SLURM): progress lines on the console and in train.log, never \\r frames."""
    run_dir = tmp_path / "run"
    result = run_cli("trainer=debug", "model.arch=mlp", "trainer.max_steps=12", "trainer.log_every=4",
                     "trainer.log_seconds=0", "trainer.eval_every=0", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "train: " in line and " step (" in line]
    assert [line.split("train: ")[1].split(" step")[0] for line in lines] == ["4/12", "8/12", "12/12"]
    assert all("neg_elbo_nats" in line and "img/s" in line and "ETA" in line for line in lines)
    assert "\r" not in result.stdout + result.stderr
    logged = (run_dir / "train.log").read_text()
    assert all(line.split(" - ", 1)[1] in logged for line in lines)
    assert "overrides: trainer=debug model.arch=mlp" in logged and "CPU threads:" in logged
