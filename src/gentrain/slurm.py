"""The SLURM launcher of `gentrain -m hydra/launcher=slurm` (configs/hydra/launcher/slurm.yaml): hydra-submitit-
launcher's, whose jobs continue after their time limit. Needs the cluster extra (pip install 'gentrain[cluster]').

At `signal_delay_s` seconds before a job's time limit SLURM sends it SIGUSR2 (submitit's `--signal=USR2@<delay>`;
SUBMITIT_PREEMPT_SIGNAL picks another). submitit's handler would call `checkpoint()`, `scontrol requeue` the job and
exit at once, in the middle of a training step and without saving. Here, during training, the signal stops the
trainer the way SIGTERM does (errors.deferred_stop: it finishes the step, writes a checkpoint and raises Preempted),
and only then is submitit's handler run: `checkpoint()` gives the same job (same number, same directory) with
`trainer.resume=auto` added, which submitit requeues (at most `max_num_timeout` times for time limits). SIGTERM
during training (a preemption) also saves, and leaves that job for SLURM to requeue. The job directory keeps its
name: trainer.resume never names one (run_names.swept_overrides).

Hydra takes launchers from the hydra_plugins package only: hydra_plugins/gentrain_launcher registers this class.
"""

from __future__ import annotations

import signal
from typing import Any, Sequence

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

from gentrain.errors import Preempted

RESUME = "trainer.resume=auto"


def with_resume(overrides: Sequence[str]) -> list[str]:
    """A job's overrides for its next run: its own, continuing from its latest checkpoint (once, however often
    the job is requeued; another trainer.resume value is replaced)."""
    if RESUME in overrides:
        return list(overrides)
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "trainer.resume"] + [RESUME]


class ResumingSlurmLauncher(SlurmLauncher):
    """hydra-submitit-launcher's SlurmLauncher; the first submission is the same, a requeued job continues."""

    def checkpoint(self, sweep_overrides: Sequence[str], *args: Any, **kwargs: Any) -> Any:
        """What submitit requeues (a DelayedSubmission): this call again, with trainer.resume=auto."""
        return super().checkpoint(with_resume(sweep_overrides), *args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """One job, in its SLURM allocation (see the module docstring for the time-limit signal)."""
        import submitit

        time_limit = submitit.JobEnvironment._usr_sig()
        requeue = signal.getsignal(time_limit)  # submitit's: checkpoint(), scontrol requeue, exit
        outside_training = signal.getsignal(signal.SIGTERM)
        received: list[int] = []

        def on_time_limit(signum: int, frame: Any) -> None:
            stop = signal.getsignal(signal.SIGTERM)
            if stop == outside_training or not callable(stop):
                if callable(requeue):  # not training (loading, final evaluation): nothing to save, requeue now
                    requeue(signum, frame)
                return
            received.append(signum)
            stop(signum, frame)  # the trainer's deferred stop: finish the step, checkpoint, raise Preempted

        signal.signal(time_limit, on_time_limit)
        try:
            return super().__call__(*args, **kwargs)
        except Preempted:
            if received and callable(requeue):
                requeue(received[0], None)  # exits, or raises when submitit will not requeue (too many timeouts)
            elif hasattr(getattr(requeue, "__self__", None), "checkpoint_and_exit"):
                # SIGTERM (a preemption, scancel): submitit's file of the job to run is made to continue too, for
                # when SLURM requeues the job itself (PreemptMode=REQUEUE); then exits.
                requeue.__self__.checkpoint_and_exit(signal.SIGTERM, None)
            raise
        finally:
            signal.signal(time_limit, requeue)
