"""The state that lets a run continue exactly where it stopped: what a checkpoint holds, how a run resumes
from one, how a stop signal saves one, and how the final test pass goes back to the best one
(trainer.early_stopping).
A part of the Trainer (trainer.py), kept here so that the loop reads on its own."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

from gentrain import distributed
from gentrain.checkpoint import gather_rng_states, load_checkpoint, restore_rank_rng
from gentrain.errors import CheckpointError, Preempted

log = logging.getLogger("gentrain.trainer")


class TrainerState:
    """State of the Trainer that inherits it (its attributes are the Trainer's)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly (checkpoint.py); every process calls it."""
        return {
            "identity": self.identity,
            "model": self.model.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "schedulers": {name: s.state_dict() for name, s in self.schedulers.items()},
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.updater.scaler.state_dict(),
            "step": self.step, "batches": self.batches.state_dict(),
            "best_metric": self.best_metric, "last_good": self.last_good,
            "best_step": self.best_step, "best_validation": self.best_validation,
            "nonfinite_skipped": self.updater.skipped, "train_seconds": self.train_seconds,
            "wall_minutes": self._wall_minutes(), **gather_rng_states(),
        }

    def load_state_dict(self, state: dict[str, Any], source: Path) -> None:
        """Continue from a checkpoint's state (load_checkpoint(for_training=True) checked its contents)."""
        try:
            self.model.load_state_dict(state["model"])
            for name, optimizer in self.optimizers.items():
                optimizer.load_state_dict(state["optimizers"][name])
            for name, scheduler in self.schedulers.items():
                scheduler.load_state_dict(state["schedulers"][name])
            if self.ema is not None and state["ema"] is not None:
                self.ema.load_state_dict(state["ema"])
            elif self.ema is not None:
                log.warning("the checkpoint has no EMA weights; the average starts from the current weights")
            self.updater.scaler.load_state_dict(state["scaler"])
            self.batches.load_state_dict(state["batches"])
            restore_rank_rng(state, self.parallel.rank, self.seed)
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as err:
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise CheckpointError(f"{source} does not fit this run: {first_line}") from None
        self.step, self.best_metric = int(state["step"]), float(state["best_metric"])
        self.last_good = state.get("last_good")  # checkpoints from before gentrain tracked it: unknown
        self.best_step = int(state.get("best_step", self.step))  # older checkpoints: from here on
        self.best_validation = state.get("best_validation")
        self.updater.skipped = int(state["nonfinite_skipped"])
        self.train_seconds, self.minutes_before_resume = float(state["train_seconds"]), float(state["wall_minutes"])
        log.info("resumed from %s at step %d (epoch %d)", source, self.step, self.batches.epoch)

    def _save_and_exit(self, signum: int) -> None:
        """A stop signal: checkpoint the step reached and exit with 128 + the signal
        (errors.deferred_stop)."""
        state = self.state_dict()  # on every process (a collective), before the barrier
        if self.parallel.is_main:
            self.checkpoints.save(state, self.step, best=False, keep_also=self.last_good)
        path = self.checkpoints.step_path(self.step)  # written by rank 0, named the same on every rank
        distributed.barrier()  # no process exits (and gets its siblings killed) before the checkpoint is written
        self.logger.close()
        raise Preempted(f"stopped by {signal.Signals(signum).name} at step {self.step}; checkpoint {path}. "
                        f"Continue with: gentrain trainer.resume={self.run_dir}", signum)

    def _restore_best(self, last_validation: dict[str, float]) -> dict[str, float]:
        """Back to the best checkpoint's weights (and EMA) for the final test pass -> its validation
        metrics."""
        if self.best_step == self.step or self.best_validation is None:
            return last_validation
        distributed.barrier()  # rank 0 has written best.pt
        best = load_checkpoint(self.checkpoints.directory / "best.pt", map_location=self.device)
        self.model.load_state_dict(best["model"])
        if self.ema is not None and best.get("ema") is not None:
            self.ema.load_state_dict(best["ema"])
        log.info("early stopping: the test pass scores the best checkpoint, step %d (val %s %.4f)",
                 self.best_step, self.model.main_metric, self.best_validation[self.model.main_metric])
        return self.best_validation
