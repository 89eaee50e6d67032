"""hydra/launcher=slurm without SLURM: a sweep whose jobs are stopped part-way (the time limit's SIGUSR2, a
preemption's SIGTERM) continues each in its own directory with trainer.resume=auto (gentrain/slurm.py)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import yaml
from conftest import gentrain_in_process

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
import submitit  # noqa: E402  (installed with the launcher)
from submitit.core import job_environment, submission, utils  # noqa: E402
from submitit.slurm.slurm import SlurmJobEnvironment  # noqa: E402

from gentrain.slurm import ResumingSlurmLauncher, with_resume  # noqa: E402

JOB = ("model=vae", "trainer=debug", "model.arch=mlp", "model.hidden=[32]", "model.iw_samples=2",
       "trainer.max_steps=6", "trainer.eval_every=0", "trainer.eval_limit=64", "trainer.progress_bar=false")
STOP_AT = 3  # the step at which each job's first run gets its signal


class FakeSlurm:
    """submitit.AutoExecutor for a cluster that runs each job of an array in this process, through submitit's own
    job code (submission.process_job: the pickled call, its signal handlers, checkpoint() on the time-limit signal).
    A run that exits to be requeued (submitit's `scontrol requeue`, or SLURM after a preemption) runs again."""

    runs: dict[str, list[list[str]]] = {}  # job id -> the overrides of each of its runs

    def __init__(self, cluster: str, folder: str, slurm_max_num_timeout: int = 3, **_: object):
        self.folder, self.max_num_timeout, self.parameters = folder, slurm_max_num_timeout, {}

    def update_parameters(self, **parameters: object) -> None:
        self.parameters.update(parameters)

    def map_array(self, function, *iterables):
        return [self._run(f"100_{index}", function, args) for index, args in enumerate(zip(*iterables))]

    def _run(self, job_id: str, function, args):
        array, task = job_id.split("_")
        os.environ.update(SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID=job_id, SLURM_ARRAY_JOB_ID=array,
                          SLURM_ARRAY_TASK_ID=task, SLURM_PROCID="0")
        paths = utils.JobPaths(self.folder, job_id=job_id, task_id=0)
        paths.folder.mkdir(parents=True, exist_ok=True)
        delayed = utils.DelayedSubmission(function, *args)
        delayed.set_timeout(self.parameters["timeout_min"], self.max_num_timeout)
        delayed.dump(paths.submitted_pickle)
        for _ in range(3):
            self.runs.setdefault(job_id, []).append(utils.DelayedSubmission.load(paths.submitted_pickle).args[0])
            handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGCONT, signal.SIGUSR2)}
            try:
                submission.process_job(self.folder)
                break
            except SystemExit:
                continue  # requeued: SLURM starts the job again
            finally:
                for s, handler in handlers.items():
                    signal.signal(s, handler)
        outcome, result = utils.pickle_load(paths.result_pickle)
        assert outcome == "success", result
        return type("Job", (), {"results": lambda self: [result]})()


def test_requeued_calls_carry_trainer_resume_auto_once() -> None:
    launcher = ResumingSlurmLauncher()
    first = ["model.latent_dim=4", "trainer.lr=0.1"]
    again = launcher.checkpoint(first, "hydra.sweep.dir", 0, "job_id_for_0", {})
    assert again.function is launcher and again.args[0] == [*first, "trainer.resume=auto"]
    assert launcher.checkpoint(*again.args).args[0] == again.args[0]  # requeued twice: added once
    assert again.args[1:] == ("hydra.sweep.dir", 0, "job_id_for_0", {})  # the same job number
    assert with_resume(["trainer.resume=null", "seed=1"]) == ["seed=1", "trainer.resume=auto"]


def test_slurm_jobs_stopped_part_way_continue_in_their_own_directories(tmp_path: Path, shared_data: Path,
                                                                       monkeypatch) -> None:
    from gentrain.trainer import Trainer

    # Job 0 reaches its time limit (SIGUSR2 some minutes before it), job 1 is preempted (SIGTERM), each once.
    signals = {"0_latent_dim=4": signal.SIGUSR2, "1_latent_dim=8": signal.SIGTERM}
    train_step, requeued = Trainer._train_step, []

    def step_then_signal(self) -> None:
        train_step(self)
        if self.step == STOP_AT and self.run_dir.name in signals:
            os.kill(os.getpid(), signals.pop(self.run_dir.name))

    monkeypatch.setattr(Trainer, "_train_step", step_then_signal)
    monkeypatch.setattr(submitit, "AutoExecutor", FakeSlurm)
    monkeypatch.setattr(SlurmJobEnvironment, "_requeue",
                        lambda env, countdown: requeued.append((env.job_id, countdown)))
    monkeypatch.setattr(job_environment.SignalHandler, "has_timed_out", lambda handler: True)
    for name in ("SUBMITIT_EXECUTOR", "SUBMITIT_FOLDER", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                 "SLURM_PROCID"):
        monkeypatch.setenv(name, "")  # FakeSlurm and submitit set them; monkeypatch restores them afterwards
    FakeSlurm.runs = {}
    sweep = tmp_path / "sweep"

    status, out, err = gentrain_in_process("-m", "hydra/launcher=slurm", *JOB, "model.latent_dim=4,8",
                                           f"hydra.sweep.dir={sweep}")
    assert status == 0, out + err
    assert "sweep of 2 jobs finished, 0 failed" in out
    assert not signals  # both signals were sent
    # The first submission is the sweep's own; the requeued one adds trainer.resume=auto, in the same directory.
    for job, latent in (("100_0", "4"), ("100_1", "8")):
        first = FakeSlurm.runs[job][0]
        assert first[-1] == f"model.latent_dim={latent}" and not any("resume" in o for o in first)
        assert FakeSlurm.runs[job] == [first, [*first, "trainer.resume=auto"]]
    assert requeued == [("100_0", 4)]  # the time limit (max_num_timeout 5) requeues; SLURM requeues a preemption
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [".submitit", "0_latent_dim=4", "1_latent_dim=8"]
    for name, signal_name in (("0_latent_dim=4", "SIGUSR2"), ("1_latent_dim=8", "SIGTERM")):
        run = sweep / name
        log = (run / "train.log").read_text()
        assert f"{signal_name} received: stopping after the current step" in log
        assert f"resumed from {run / 'checkpoints' / 'step_00000003.pt'} at step {STOP_AT}" in log
        assert json.loads((run / "metrics.json").read_text())["step"] == 6
        assert json.loads((run / "status.json").read_text())["status"] == "finished"
        assert yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())[-1] == "trainer.resume=auto"
