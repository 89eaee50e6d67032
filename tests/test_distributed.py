"""Several processes (torchrun, Gloo on CPU): same parameters as one process, one run directory, resume."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from conftest import SHARED_DATA, run_cli
from synthetic import write_mnist

from gentrain.checkpoint import load_checkpoint, restore_rank_rng, restore_rng, rng_state
from gentrain.runtime import seed_generators

# PixelCNN's loss has no sampling noise, so one process on a global batch of 16 and two processes on 8 each
# must follow the same trajectory up to floating-point summation order.
PIXELCNN = ("model=pixelcnn", "model.hidden_channels=8", "model.num_layers=2", "model.head_channels=16",
            "trainer=debug", "trainer.max_steps=5", "trainer.eval_every=0", "trainer.batch_size=16",
            "trainer.eval_limit=64", "trainer.num_samples=4", "trainer.deterministic=true",
            "trainer.progress_bar=false")
TOLERANCE = 1e-5  # max |difference| of any parameter after 5 Adam steps (measured: about 6e-8)


# Runs gentrain, except that on the first attempt rank {rank} dies without a word, as a lost node or
# an out-of-memory kill would: at training step {step}, or as the final {split} pass starts.
KILL_ONCE = """
import os, runpy
from gentrain import evaluation, update
if os.environ["RANK"] == "{rank}" and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
    step, split = update.Updater.step, evaluation.Evaluator.split
    def dying_step(self, batch, number):
        if number == {step}:
            os._exit(9)
        return step(self, batch, number)
    def dying_split(self, name, **options):
        if name == "{split}":
            os._exit(9)
        return split(self, name, **options)
    update.Updater.step, evaluation.Evaluator.split = dying_step, dying_split
runpy.run_module("gentrain", run_name="__main__")
"""
# What the restart tests share: a restarted worker continues from the run's latest checkpoint.
RESTARTABLE = ("trainer=debug", "trainer.batch_size=16", "trainer.eval_limit=64",
               "trainer.num_samples=4", "trainer.deterministic=true", "trainer.progress_bar=false",
               "trainer.resume=auto")
# A tiny MLP VAE on dynamically binarized MNIST: every process draws its own binarization and
# reparameterisation noise at every step, so a restarted process must continue its own generators.
NOISY = ("model=vae", "model.arch=mlp", "model.hidden=[16]", "model.latent_dim=4",
         "dataset.binarize=dynamic", "trainer.max_steps=10", "trainer.eval_every=4",
         "trainer.log_every=1", *RESTARTABLE)
# RealNVP's coupling networks use batch norm: each process's training forward leaves the statistics
# of its own shard behind, while checkpoints hold rank 0's.
BATCH_NORM = ("model=realnvp", "model.hidden_channels=4", "model.residual_blocks=1",
              "model.num_scales=1", "trainer.max_steps=2", *RESTARTABLE)


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


def restarted_run(settings: tuple[str, ...], tmp_path: Path, *, rank: int, step: int = -1,
                  split: str = "") -> Path:
    """<tmp_path>/restarted: the run under torchrun --max-restarts=1, rank `rank` killed once."""
    killer = tmp_path / f"kill_rank_{rank}_once.py"
    killer.write_text(KILL_ONCE.format(rank=rank, step=step, split=split))
    run = tmp_path / "restarted"
    result = torchrun(*settings, f"hydra.run.dir={run}", cwd=tmp_path,
                      launcher=("--max-restarts=1", str(killer)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "restart 1 of the workers" in (run / "train.log").read_text()
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    return run


def assert_same_final_metrics(a: Path, b: Path) -> None:
    finals = [json.loads((run / "metrics.json").read_text()) for run in (a, b)]
    assert finals[0]["val"] == finals[1]["val"]
    assert finals[0]["test"] == finals[1]["test"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """The two-process NOISY run that the restarted ones must reproduce exactly."""
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    straight = torchrun(*NOISY, f"hydra.run.dir={run}", cwd=run.parent)
    assert straight.returncode == 0, straight.stdout + straight.stderr
    return run


@pytest.mark.parametrize("killed_rank", [0, 1])
def test_a_lost_worker_is_restarted_and_the_run_continues_from_its_checkpoint(
        killed_rank: int, uninterrupted: Path, tmp_path: Path) -> None:
    run = restarted_run(NOISY, tmp_path, rank=killed_rank, step=6)  # after the checkpoint of step 4
    assert "step_00000004.pt at step 4" in (run / "train.log").read_text()

    # Every rank continued its own generators: the weights and the optimizer's moments are those of
    # the uninterrupted run, bit for bit.
    a = load_checkpoint(uninterrupted / "checkpoints" / "step_00000010.pt")
    b = load_checkpoint(run / "checkpoints" / "step_00000010.pt")
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for name, optimizer in a["optimizers"].items():
        theirs = b["optimizers"][name]["state"]
        assert optimizer["state"] and optimizer["state"].keys() == theirs.keys(), name
        for i, moments in optimizer["state"].items():
            for key, value in moments.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(theirs[i][key])), (i, key)
    assert_same_final_metrics(uninterrupted, run)

    # One run directory, and every step once in TensorBoard: what the dead attempt logged after step 4 is hidden.
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"kill_rank_{killed_rank}_once.py",
                                                          "restarted"]
    events = EventAccumulator(str(run))
    events.Reload()
    assert [e.step for e in events.Scalars("train/bits_per_dim")] == list(range(1, 11))


def test_a_worker_lost_in_the_final_test_pass_restarts_to_the_same_metrics(
        tmp_path: Path, shared_data: Path) -> None:
    """The restarted run evaluates the final checkpoint again, with rank 0's batch-norm statistics
    on every process, as the uninterrupted run did."""
    straight = torchrun(*BATCH_NORM, f"hydra.run.dir={tmp_path / 'straight'}", cwd=tmp_path)
    assert straight.returncode == 0, straight.stdout + straight.stderr
    run = restarted_run(BATCH_NORM, tmp_path, rank=1, split="test")
    assert "step_00000002.pt at step 2" in (run / "train.log").read_text()
    assert_same_final_metrics(tmp_path / "straight", run)


def test_each_rank_continues_its_own_generators_and_a_rank_the_checkpoint_lacks_is_seeded() -> None:
    def draws() -> tuple[float, ...]:  # one number from each generator a run draws from
        return random.random(), float(np.random.rand()), torch.rand(()).item()

    before = rng_state()
    try:
        states = []
        for seed in (1, 2):
            seed_generators(seed)
            states.append(rng_state())
        expected = []
        for state in states:
            restore_rng(state)
            expected.append(draws())
        two_ranks = {"rng": states[0], "rng_by_rank": states, "step": 4}
        for rank in (0, 1):
            restore_rank_rng(two_ranks, rank, seed=0)
            assert draws() == expected[rank]
        # From before gentrain kept every rank's (or resumed with more processes): rank 0's alone.
        rank_0_only = {"rng": states[0], "step": 4}
        restore_rank_rng(rank_0_only, 0, seed=0)
        assert draws() == expected[0]
        fallbacks = []
        for _ in range(2):
            restore_rank_rng(rank_0_only, 1, seed=0)
            fallbacks.append(draws())
        assert fallbacks[0] == fallbacks[1] and fallbacks[0] not in expected  # reproducible
    finally:
        restore_rng(before)
