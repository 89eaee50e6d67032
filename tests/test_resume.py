"""Runs that survive: exact resume after SIGKILL, preemption, safe checkpoints, bad numbers and bad input."""

from __future__ import annotations

import errno
import json
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli, start_cli, train_in_process
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import gentrain.checkpoint as checkpoint_module
from gentrain.checkpoint import CheckpointManager, load_checkpoint
from gentrain.errors import CheckpointError, NonFiniteError
from gentrain.models.vae import VAE

# A small, fully deterministic run: MLP VAE, dynamic binarization (the data RNG matters), EMA and a learning-rate
# warm-up (their states matter), evaluation every 20 steps.
RUN = (
    "experiment=vae_binarized_mnist", "model.hidden=[64]", "model.iw_samples=2", "trainer.batch_size=32",
    "trainer.max_steps=200", "trainer.max_epochs=null", "trainer.eval_every=20", "trainer.log_every=5",
    "trainer.eval_limit=200", "trainer.ema_decay=0.9", "trainer.warmup_steps=50", "trainer.deterministic=true",
    "trainer.progress_bar=false",
)
NEVER_ENDS = "trainer.max_steps=100000000"  # a run that can only stop by being killed


def wait_for(path: Path, process, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def final_state(run_dir: Path) -> dict:
    return load_checkpoint(CheckpointManager(run_dir / "checkpoints", 1).latest())


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_kill_9_then_resume_equals_the_uninterrupted_run(tmp_path: Path, shared_data: Path) -> None:
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    result = run_cli(*RUN, f"hydra.run.dir={straight}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    process = start_cli(*RUN, NEVER_ENDS, f"hydra.run.dir={interrupted}", cwd=tmp_path)
    wait_for(interrupted / "checkpoints" / "step_00000040.pt", process)
    process.kill()  # SIGKILL: no handler runs, no last checkpoint is written
    process.wait()

    # The same command with the same limit as the uninterrupted run (the warm-up does not depend on it).
    resumed = run_cli(f"trainer.resume={interrupted}", "trainer.max_steps=200", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in (interrupted / "train.log").read_text()

    a, b = final_state(straight), final_state(interrupted)
    assert a["step"] == b["step"] == 200
    assert_same_weights(a["model"], b["model"])
    for x, y in zip(a["ema"]["shadow"], b["ema"]["shadow"]):
        assert torch.equal(x, y)
    assert json.loads((straight / "metrics.json").read_text())["test"] == \
        json.loads((interrupted / "metrics.json").read_text())["test"]

    # TensorBoard continues: every logged step appears exactly once, none missing.
    events = EventAccumulator(str(interrupted))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/neg_elbo_nats")]
    assert steps == list(range(5, 201, 5))


def test_sigterm_writes_a_resumable_checkpoint(tmp_path: Path, shared_data: Path) -> None:
    run_dir = tmp_path / "run"
    process = start_cli(*RUN, NEVER_ENDS, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    wait_for(run_dir / "checkpoints" / "step_00000020.pt", process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "stopped by SIGTERM" in output and f"trainer.resume={run_dir}" in output
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "preempted"
    state = final_state(run_dir)
    assert state["step"] >= 20

    resumed = run_cli(f"trainer.resume={run_dir}", f"trainer.max_steps={state['step'] + 10}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == state["step"] + 10


def test_resume_auto_starts_fresh_then_continues(tmp_path: Path, shared_data: Path) -> None:
    run_dir = tmp_path / "fixed"
    first = train_in_process(run_dir, *RUN, "trainer.max_steps=20", "trainer.resume=auto")
    assert first["step"] == 20
    second = train_in_process(run_dir, *RUN, "trainer.max_steps=40", "trainer.resume=auto")
    assert second["step"] == 40
    assert final_state(run_dir)["step"] == 40


def small_state(weights: torch.Tensor, step: int) -> dict:
    return {"identity": {"model": "vae", "model_config": {}, "data": {}}, "model": {"w": weights}, "step": step}


def serializer_error(obj, f):
    """What torch.save does on a full disk: the OSError arrives wrapped in its own RuntimeError."""
    f.write(b"half a checkpoint")
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")


def plain_error(obj, f):
    f.write(b"half a checkpoint")
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("full_disk", [plain_error, serializer_error])
def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path: Path, monkeypatch, full_disk) -> None:
    manager = CheckpointManager(tmp_path / "checkpoints", keep=3)
    manager.save(small_state(torch.ones(3), 10), 10, best=True)
    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"^could not write checkpoint .*step_00000020.pt \(No space left on "
                                              r"device\); earlier checkpoints are intact$"):
        manager.save(small_state(torch.zeros(3), 20), 20, best=True)
    monkeypatch.undo()
    assert manager.latest().name == "step_00000010.pt"
    assert torch.equal(load_checkpoint(manager.latest())["model"]["w"], torch.ones(3))
    assert torch.equal(load_checkpoint(manager.directory / "best.pt")["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in manager.directory.iterdir()) == ["best.pt", "step_00000010.pt"]  # no temp files


def nan_at(steps: set[int]):
    original = VAE.loss

    def loss(self, batch, step):
        out = original(self, batch, step)
        if step in steps:
            out.loss = out.loss * float("nan")
            out.logs["recon_nats"] = out.logs["recon_nats"] * float("nan")
        return out

    return loss


def test_nonfinite_steps_are_skipped_and_counted(tmp_path: Path, shared_data: Path, monkeypatch) -> None:
    monkeypatch.setattr(VAE, "loss", nan_at({3, 4}))
    result = train_in_process(tmp_path, *RUN, "trainer.max_steps=10", "trainer.eval_every=5")
    assert result["nonfinite_steps_skipped"] == 2
    assert all(torch.isfinite(v).all() for v in final_state(tmp_path)["model"].values())


def test_too_many_nonfinite_steps_stop_with_the_step_and_term(tmp_path: Path, shared_data: Path, monkeypatch) -> None:
    monkeypatch.setattr(VAE, "loss", nan_at(set(range(25, 1000))))
    with pytest.raises(NonFiniteError) as err:
        train_in_process(tmp_path, *RUN, "trainer.max_nonfinite=3")
    message = str(err.value)
    assert "non-finite loss at step 27" in message and "recon_nats" in message and "3 in a row" in message
    assert "step_00000020.pt" in message  # the last good checkpoint, still the latest one
    assert CheckpointManager(tmp_path / "checkpoints", 1).latest().name == "step_00000020.pt"


def test_halt_stops_at_the_first_nonfinite_step(tmp_path: Path, shared_data: Path, monkeypatch) -> None:
    monkeypatch.setattr(VAE, "loss", nan_at({2}))
    with pytest.raises(NonFiniteError, match="step 2 .*trainer.nonfinite=halt"):
        train_in_process(tmp_path, *RUN, "trainer.nonfinite=halt")


def test_checkpoint_of_another_model_or_config_is_refused(tmp_path: Path, shared_data: Path) -> None:
    source = tmp_path / "source"
    train_in_process(source, *RUN, "trainer.max_steps=20")
    with pytest.raises(CheckpointError, match=r"another model config \(model.latent_dim: 20 there, 8 here\)"):
        train_in_process(tmp_path / "other", *RUN, "model.latent_dim=8", f"trainer.resume={source}")

    state = final_state(source)
    state["identity"]["model"] = "dcgan"
    forged = tmp_path / "forged" / "checkpoints"
    forged.mkdir(parents=True)
    torch.save(state, forged / "step_00000020.pt")
    with pytest.raises(CheckpointError, match="checkpoint of model 'dcgan', but this run trains 'vae'"):
        train_in_process(tmp_path / "third", *RUN, f"trainer.resume={forged / 'step_00000020.pt'}")


def test_a_malicious_checkpoint_is_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint_module.FORMAT, "model": Exploit()}, path)
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_not_a_run_directory(tmp_path: Path) -> None:
    result = run_cli(f"trainer.resume={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2 and "is not a gentrain run directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_sweep_with_one_bad_job_finishes_the_others(tmp_path: Path, shared_data: Path) -> None:
    """Parallel jobs (joblib), no pinned sweep directory: the bad job is recorded, the other finishes, exit 1."""
    result = run_cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer=debug", "model.arch=mlp",
                     "model.iw_samples=2", "trainer.max_steps=4", "trainer.batch_size=0,16", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "sweep of 2 jobs finished, 1 failed" in result.stdout
    assert "trainer.batch_size must be between 1 and 65536" in result.stdout
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    assert (sweep / "1_batch_size=16" / "metrics.json").exists()
    summary = (sweep / "summary.md").read_text()
    assert "| trainer.batch_size |" in summary.splitlines()[0]
    assert "| 1 | 16 | finished |" in summary and "| 0 | 0 | failed |" in summary
