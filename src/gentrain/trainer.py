"""The one training loop. It knows models only through the GenerativeModel interface (models/base.py).

What happens in one training step is update.py's; how the run is evaluated, evaluation.py's; how it is saved,
checkpoint.py's. This file strings them together: the loop and its limits, logging, evaluation and checkpoints
at their intervals, the final test pass; the state that lets a run continue exactly where it stopped is
trainer_state.py's.
"""

from __future__ import annotations

import logging
import math
import re
import signal
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from gentrain import distributed
from gentrain.checkpoint import CheckpointManager, all_finite
from gentrain.config import LRSchedule, TrainerConfig
from gentrain.data.base import ImageDataset
from gentrain.data.batches import TrainBatches, eval_batches
from gentrain.ema import EMA
from gentrain.errors import ConfigError, Interrupted, NonFiniteError, deferred_stop
from gentrain.evaluation import Evaluator, SampleMetrics
from gentrain.logger import RunLogger, write_json
from gentrain.models.base import GenerativeModel
from gentrain.optim import build_optimizer, build_scheduler
from gentrain.progress import Progress
from gentrain.runtime import check_precision, peak_memory_mb, process_seconds, use_channels_last
from gentrain.trainer_state import TrainerState
from gentrain.update import Updater

log = logging.getLogger(__name__)


class Trainer(TrainerState):
    """Trains any GenerativeModel: the steps, EMA, schedules, logging, evaluation, samples and checkpoints."""

    def __init__(self, model: GenerativeModel, dataset: ImageDataset, cfg: TrainerConfig, *, run_dir: Path,
                 device: torch.device, seed: int, identity: dict[str, Any], hparams: dict[str, Any],
                 sample_metrics: Optional[SampleMetrics] = None, config_text: str = ""):
        check_precision(cfg.precision, device)
        self.cfg, self.device, self.seed, self.run_dir = cfg, device, seed, run_dir
        self.identity = identity  # model name, model config and data shape: checked when a checkpoint loads
        self.hparams, self.config_text = hparams, config_text  # TensorBoard's HPARAMS and Text tabs
        self.model = model.to(device)
        if use_channels_last(cfg.channels_last, model, device):
            # NHWC weights let cuDNN use its tensor-core kernels; activations follow the weights' layout. On CPU
            # it is a choice: measured 10-15% faster for the VAE and DCGAN, 6% slower for the Gated PixelCNN.
            self.model.to(memory_format=torch.channels_last)
            log.info("channels-last memory format")
        self.dataset = dataset.to(device)
        self.parallel = distributed.context()
        if cfg.batch_size % self.parallel.world_size:
            raise ConfigError(f"trainer.batch_size={cfg.batch_size} (the global batch) must divide evenly among "
                              f"{self.parallel.world_size} processes")
        self.batches = TrainBatches(
            self.dataset.train, cfg.batch_size, seed=seed, use_labels=model.conditional,
            dynamic_binarization=dataset.dynamic_binarization, rank=self.parallel.rank,
            world_size=self.parallel.world_size, device=device,
        )
        if self.batches.steps_per_epoch == 0:
            raise ConfigError(f"trainer.batch_size={cfg.batch_size} is larger than the training split "
                              f"({len(dataset.train)} images)")
        self.planned_steps = cfg.planned_steps(self.batches.steps_per_epoch)

        self.optimizers = {name: build_optimizer(spec.params, spec.config, cfg.lr, device)
                           for name, spec in model.optimizer_specs().items()}
        self.schedulers = {name: build_scheduler(opt, cfg, self.planned_steps) for name, opt in self.optimizers.items()}
        self.updater = Updater(model, self.optimizers, device=device, precision=cfg.precision,
                               grad_clip=cfg.grad_clip, nonfinite=cfg.nonfinite, max_nonfinite=cfg.max_nonfinite)
        self.ema = EMA(model.ema_module(), cfg.ema_decay) if cfg.ema_decay else None
        self.evaluator = Evaluator(
            self.model, self.dataset, batch_size=cfg.eval_batch_size, precision=cfg.precision, device=device,
            seed=seed, limit=cfg.eval_limit, ema=self.ema, sample_metrics=sample_metrics, progress=cfg.progress_bar,
            final_images=cfg.final_images_for(self.batches.steps_per_epoch, model.final_cost),  # never the clock's
        )
        # Compiled after the first step, which runs eagerly: data-dependent initialisation (RealNVP's ActNorm)
        # happens there, so the compiled graphs have no branch on it.
        self._to_compile = model.compile_targets() if cfg.compile else []
        if self._to_compile:
            log.info("torch.compile after the first step: %s (evaluation runs eagerly)",
                     ", ".join(type(m).__name__ for m in self._to_compile))

        self.logger: Optional[RunLogger] = None  # opened by fit(), after a resume has set the step
        self.checkpoints = CheckpointManager(run_dir / "checkpoints", cfg.keep_checkpoints)
        self.step, self.train_seconds, self.minutes_before_resume = 0, 0.0, 0.0  # wall minutes of earlier processes
        self.best_metric, self.best_step = math.inf, 0
        self.best_validation: Optional[dict[str, float]] = None  # the best step's validation metrics
        self.last_good: Optional[str] = None  # the newest checkpoint with finite weights and validation metrics
        self._started = time.monotonic()
        self._window_steps, self._window_seconds = 0, 0.0
        self._last_validation: Optional[tuple[int, dict[str, float]]] = None  # (step, metrics)
        # Fixed images (and noise, evaluation.py) for the grids, so that steps compare.
        self.vis_batch = next(eval_batches(self.dataset.val, cfg.num_samples, use_labels=model.conditional,
                                           device=device))

    # --- the loop -------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        # Events a killed run wrote after its last checkpoint are hidden, so curves have no duplicate points.
        self.logger = RunLogger(self.run_dir, purge_step=self.step + 1 if self.step else None,
                                enabled=self.parallel.is_main)
        log.info("training on %s (%s) for %s", self.device, cfg.precision.value,
                 cfg.limits_text(self.batches.steps_per_epoch))
        if self.config_text:
            self.logger.text("config", f"```yaml\n{self.config_text}```")
        self._started = time.monotonic() - 60.0 * self.minutes_before_resume
        # A bar on a terminal; elsewhere a line at the logging steps, at most every trainer.log_seconds.
        progress = Progress(self.planned_steps, "train", "step", initial=self.step, leave=True,
                            bar=cfg.progress_bar and self.parallel.is_main, lines_on_update=False,
                            interval=cfg.log_seconds if self.parallel.is_main else math.inf)
        first_step = True
        with logging_redirect_tqdm(), progress, deferred_stop() as signals, warnings.catch_warnings():
            # The schedules follow the step count, skipped (non-finite) steps included.
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
            while True:
                time_is_up, signalled = distributed.any_process(  # clocks and signals are per process: all agree
                    [bool(cfg.max_minutes and self._wall_minutes() >= cfg.max_minutes), bool(signals)], self.device)
                if signalled:
                    self._save_and_exit(signals[0] if signals else signal.SIGTERM)
                if time_is_up or self._step_limit_reached():
                    break
                self._train_step()
                progress.update()
                if first_step:  # what a user waits for before training starts: imports, data, model, checks
                    startup = process_seconds()
                    log.info("first training step done %.1f s after the process started", startup)
                    self.logger.scalars({"perf/seconds_to_first_step": startup}, self.step)
                if self.step % cfg.log_every == 0:
                    progress.set_postfix(self._postfix(self._log_train()))
                elif first_step:  # numbers on the bar from the first step on, not only after log_every steps
                    progress.set_postfix(self._postfix(self._window_means(peek=True)), line=False)
                first_step = False
                if self._step_limit_reached():
                    break  # the final evaluation follows
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    self._evaluate_and_save()
                    if self._stopped_early():
                        break
        return self._finish()

    def _train_step(self) -> None:
        tick = time.perf_counter()
        try:
            self.updater.step(next(self.batches), self.step)
        except NonFiniteError as err:
            raise NonFiniteError(f"{err}; {self._last_good_text()}. Try a lower trainer.lr, trainer.grad_clip, or "
                                 f"trainer.precision=fp32") from None
        if self.ema is not None:
            self.ema.update()
        for scheduler in self.schedulers.values():
            scheduler.step()
        for module in self._to_compile:
            module.compile()  # in place (no `_orig_mod.` prefix), so checkpoints load with or without compile
        self._to_compile = []
        self.step += 1
        elapsed = time.perf_counter() - tick
        self.train_seconds += elapsed
        self._window_steps, self._window_seconds = self._window_steps + 1, self._window_seconds + elapsed

    def _step_limit_reached(self) -> bool:
        cfg = self.cfg
        return bool((cfg.max_steps and self.step >= cfg.max_steps)
                    or (cfg.max_epochs and self.batches.epoch >= cfg.max_epochs))

    def _stopped_early(self) -> bool:
        """trainer.early_stopping: as many evaluations in a row as it says without a better validation metric."""
        patience = self.cfg.early_stopping
        if not patience or self.step - self.best_step < patience * self.cfg.eval_every:
            return False
        log.info("early stopping: no better val/%s in %d evaluations (the best: step %d)", self.model.main_metric,
                 patience, self.best_step)
        return True

    def _wall_minutes(self) -> float:
        """Minutes since the run first started, across resumes."""
        return (time.monotonic() - self._started) / 60.0

    # --- logging --------------------------------------------------------------------------------------
    def _window_means(self, peek: bool = False) -> dict[str, float]:
        """train/<term> means and images/s of the steps since the last log (one device sync)."""
        means = self.updater.peek_means() if peek else self.updater.take_means()
        values = {f"train/{name}": mean for name, mean in means.items()}
        values["perf/images_per_sec"] = self._window_steps * self.cfg.batch_size / max(self._window_seconds, 1e-9)
        return values

    def _log_train(self) -> dict[str, float]:
        values = self._window_means()
        if self.cfg.lr_schedule is not LRSchedule.constant or self.cfg.warmup_steps:  # constant: nothing to plot
            values.update({f"lr/{name}": opt.param_groups[0]["lr"] for name, opt in self.optimizers.items()})
        values["perf/max_memory_mb"] = peak_memory_mb(self.device)
        values["train/epoch"] = self.batches.epoch + self.batches.position / self.batches.steps_per_epoch
        if self.updater.skipped:
            values["train/nonfinite_steps_skipped"] = self.updater.skipped
        self.logger.scalars(values, self.step)
        self._window_steps, self._window_seconds = 0, 0.0
        return values

    def _postfix(self, values: dict[str, float]) -> dict[str, str]:
        """The model's main training numbers and the speed, for the bar and the progress lines."""
        shown = {name: f"{values[f'train/{name}']:.4g}" for name in self.model.progress_terms
                 if f"train/{name}" in values}
        return {**shown, "img/s": f"{values['perf/images_per_sec']:,.0f}"}

    # --- evaluation -----------------------------------------------------------------------------------
    def _evaluate_and_save(self) -> dict[str, float]:
        metrics = self.evaluator.split("val") | self.evaluator.sample_quality()
        minutes = {"perf/train_minutes": self.train_seconds / 60}  # curves against time (scripts/plot_curves.py)
        self.logger.scalars({f"val/{k}": v for k, v in metrics.items()} | minutes, self.step)
        if self.parallel.is_main:
            self.logger.images(self.evaluator.grids(self.vis_batch), self.step)
        good = all(math.isfinite(v) for v in metrics.values()) and all_finite(list(self.model.state_dict().values()))
        is_best = good and metrics.get(self.model.main_metric, math.inf) < self.best_metric
        if is_best:
            self.best_metric, self.best_step, self.best_validation = metrics[self.model.main_metric], self.step, metrics
        if good:
            self.last_good = self.checkpoints.step_path(self.step).name
        state = self.state_dict()  # on every process: it gathers their generators
        if self.parallel.is_main:
            self.checkpoints.save(state, self.step, best=is_best, keep_also=self.last_good)
        self._last_validation = (self.step, metrics)
        verdict = " (best so far)" if is_best else "" if good else f" (not finite: {self._last_good_text()})"
        log.info("step %d: val %s%s", self.step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), verdict)
        self.logger.flush()
        return metrics

    def _last_good_text(self) -> str:
        if self.last_good is None:
            return "no checkpoint of this run has finite weights and validation metrics"
        return f"last good checkpoint: {self.checkpoints.directory / self.last_good}"

    def _finish(self) -> dict[str, Any]:
        # A time limit can expire right after an evaluation: that step is validated and saved already.
        already = self._last_validation is not None and self._last_validation[0] == self.step
        val = self._last_validation[1] if already else self._evaluate_and_save()
        if self.cfg.early_stopping:  # the test pass scores the best checkpoint, as early stopping selects it
            val = self._restore_best(val)
        try:
            test = self.evaluator.split("test", final=True)
        except Interrupted as stop:
            raise Interrupted(f"{stop} during the final test evaluation; the checkpoints are intact (the last is "
                              f"step {self.step}): compute the test metrics with gentrain-eval run={self.run_dir}",
                              stop.exit_code - 128) from None
        self.logger.scalars({f"test/{k}": v for k, v in test.items()}, self.step)
        log.info("test: %s", ", ".join(f"{k} {v:.4f}" for k, v in test.items()))
        notes = self.evaluator.notes()
        for note in notes:
            log.info("note: %s", note)
        result = {
            "model": self.identity["model"], "dataset": self.dataset.name, "main_metric": self.model.main_metric,
            "step": self.step, "best_step": self.best_step, "epoch": self.batches.epoch,
            "train_seconds": round(self.train_seconds, 2),
            "nonfinite_steps_skipped": self.updater.skipped, "val": val, "test": test,
            "eval_images": {"val": self.evaluator.images("val"), "test": self.evaluator.images("test")},
            "images_per_metric": self.evaluator.covered, "notes": notes,
        }
        if self.parallel.is_main:
            write_json(self.run_dir / "metrics.json", result, root=self.run_dir)
        self.logger.text("notes", "\n\n".join(notes))
        final_metrics = {f"val/{k}": v for k, v in val.items()} | {f"test/{k}": v for k, v in test.items()}
        self.logger.hparams(self.hparams, final_metrics, self.step)
        self.logger.close()
        return result
