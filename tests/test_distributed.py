"""Several processes (torchrun, Gloo on CPU): same parameters as one process, one run directory, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from conftest import SHARED_DATA, run_cli
from synthetic import write_mnist

from gentrain.checkpoint import load_checkpoint

# PixelCNN's loss has no sampling noise, so one process on a global batch of 16 and two processes on 8 each
# must follow the same trajectory up to floating-point summation order.
PIXELCNN = ("model=pixelcnn", "model.hidden_channels=8", "model.num_layers=2", "model.head_channels=16",
            "trainer=debug", "trainer.max_steps=5", "trainer.eval_every=0", "trainer.batch_size=16",
            "trainer.eval_limit=64", "trainer.num_samples=4", "trainer.deterministic=true",
            "trainer.progress_bar=false")
TOLERANCE = 1e-5  # max |difference| of any parameter after 5 Adam steps (measured: about 6e-8)


# Runs gentrain, except that on the first attempt rank 1 dies without a word at step 6 (after the checkpoint of
# step 4), as a lost node or an out-of-memory kill would.
KILL_RANK_1_ONCE = """
import os, runpy, sys
from gentrain import update
if os.environ["RANK"] == "1" and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
    step = update.Updater.step
    def dying_step(self, batch, number):
        if number == 6:
            os._exit(9)
        return step(self, batch, number)
    update.Updater.step = dying_step
runpy.run_module("gentrain", run_name="__main__")
"""


def torchrun(*args: str, cwd: Path, processes: int = 2, launcher: tuple[str, ...] = ("-m", "gentrain")
             ) -> subprocess.CompletedProcess:
    env = {**os.environ, "GENTRAIN_DATA": str(SHARED_DATA), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
         *launcher, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )


def test_two_processes_match_one_and_share_one_run_directory(tmp_path: Path, shared_data: Path) -> None:
    one = run_cli(*PIXELCNN, f"hydra.run.dir={tmp_path / 'one'}", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr
    (tmp_path / "two").mkdir()
    # the default timestamped directory; each process streams its shard from disk (dataset.in_memory=false)
    two = torchrun(*PIXELCNN, "dataset.in_memory=false", cwd=tmp_path / "two")
    assert two.returncode == 0, two.stdout + two.stderr

    runs = list((tmp_path / "two" / "outputs").glob("*/*"))
    assert len(runs) == 1, runs  # both processes resolved the same outputs/<date>/<time>/
    run = runs[0]
    assert "rank 0 of 2 processes, gloo backend" in (run / "train.log").read_text()

    a = load_checkpoint(tmp_path / "one" / "checkpoints" / "step_00000005.pt")["model"]
    b = load_checkpoint(run / "checkpoints" / "step_00000005.pt")["model"]
    difference = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert difference < TOLERANCE, difference
    val_one = json.loads((tmp_path / "one" / "metrics.json").read_text())["val"]["bits_per_dim"]
    val_two = json.loads((run / "metrics.json").read_text())["val"]["bits_per_dim"]
    assert abs(val_one - val_two) < 1e-4  # evaluation is sharded and summed over both processes

    # Resume the two-process run with one process: the data position counts global batches.
    resumed = run_cli(f"trainer.resume={run}", "trainer.max_steps=8", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "metrics.json").read_text())["step"] == 8


def test_a_gan_with_fid_under_two_processes(tmp_path: Path) -> None:
    write_mnist(tmp_path / "tiny", n_train=80, n_test=20)
    result = torchrun(
        "model=dcgan", "trainer=debug", "trainer.max_steps=4", "trainer.eval_every=2", "trainer.batch_size=16",
        "model.generator_width=8", "model.critic_width=8", "dataset.verify=false", f"dataset.root={tmp_path / 'tiny'}",
        "metrics.fid.num_samples=40", "metrics.fid.kid_subset_size=20", "metrics.fid.kid_subsets=5",
        "metrics.fid.classifier.steps=5", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert torch.isfinite(torch.tensor(metrics["val"]["fid"])) and metrics["step"] == 4


def test_a_global_batch_must_split_evenly(tmp_path: Path, shared_data: Path) -> None:
    result = torchrun(*PIXELCNN, "trainer.batch_size=15", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode != 0
    assert "must divide evenly among 2 processes" in result.stdout + result.stderr


def test_a_lost_worker_is_restarted_and_the_run_continues_from_its_checkpoint(tmp_path: Path, shared_data: Path
                                                                               ) -> None:
    settings = [a for a in PIXELCNN if not a.startswith(("trainer.max_steps=", "trainer.eval_every="))]
    settings += ["trainer.max_steps=10", "trainer.eval_every=4", "trainer.log_every=1", "trainer.resume=auto"]
    straight = torchrun(*settings, f"hydra.run.dir={tmp_path / 'straight'}", cwd=tmp_path)
    assert straight.returncode == 0, straight.stdout + straight.stderr

    killer = tmp_path / "kill_rank_1_once.py"
    killer.write_text(KILL_RANK_1_ONCE)
    run = tmp_path / "restarted"
    restarted = torchrun(*settings, f"hydra.run.dir={run}", cwd=tmp_path, launcher=("--max-restarts=1", str(killer)))
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    log = (run / "train.log").read_text()
    assert "restart 1 of the workers" in log and "resumed from" in log and "step_00000004.pt at step 4" in log

    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step_00000010.pt")
    b = load_checkpoint(run / "checkpoints" / "step_00000010.pt")
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    finals = [json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "straight", run)]
    assert finals[0]["test"] == finals[1]["test"] and finals[0]["val"] == finals[1]["val"]
    assert json.loads((run / "status.json").read_text())["status"] == "finished"

    # One run directory, and every step once in TensorBoard: what the dead attempt logged after step 4 is hidden.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kill_rank_1_once.py", "restarted", "straight"]
    events = EventAccumulator(str(run))
    events.Reload()
    assert [e.step for e in events.Scalars("train/bits_per_dim")] == list(range(1, 11))
