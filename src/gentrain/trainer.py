"""The one training loop. It knows models only through the GenerativeModel interface (models/base.py)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.contrib.logging import logging_redirect_tqdm

from gentrain import distributed
from gentrain.checkpoint import CheckpointManager, all_finite, restore_rng, rng_state
from gentrain.config import LRSchedule, NonFinitePolicy, Precision, TrainerConfig
from gentrain.data.base import ImageDataset
from gentrain.data.batches import Batch, TrainBatches, eval_batches
from gentrain.ema import EMA
from gentrain.evaluation import Evaluator, SampleMetrics
from gentrain.errors import CheckpointError, ConfigError, Interrupted, NonFiniteError, Preempted
from gentrain.logger import RunLogger, write_json
from gentrain.models.base import GenerativeModel, LossOutput, Update
from gentrain.optim import build_optimizer, build_scheduler
from gentrain.progress import Progress
from gentrain.runtime import autocast, check_precision, peak_memory_mb

log = logging.getLogger(__name__)


class _LossRunner(nn.Module):
    """Computes an update's loss inside forward(), so that DistributedDataParallel sees one forward per backward
    (models compute their losses in methods of their own, which DDP would not see)."""

    def __init__(self, model: GenerativeModel, updates: list[Update]):
        super().__init__()
        self.model = model
        self.updates = updates

    def forward(self, index: int, x: Tensor, y: Optional[Tensor], step: int) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.updates[index].loss(Batch(x, y), step)
        return out.loss, out.logs


class Trainer:
    """Trains any GenerativeModel: updates, precision, clipping, EMA, evaluation, samples and checkpoints."""

    def __init__(
        self,
        model: GenerativeModel,
        dataset: ImageDataset,
        cfg: TrainerConfig,
        *,
        run_dir: Path,
        device: torch.device,
        seed: int,
        identity: dict[str, Any],
        hparams: dict[str, Any],
        sample_metrics: Optional[SampleMetrics] = None,
        config_text: str = "",
    ):
        check_precision(cfg.precision, device)
        self.cfg = cfg
        self.device = device
        self.seed = seed
        self.run_dir = run_dir
        self.identity = identity  # model name, model config and data shape: checked when a checkpoint loads
        self.hparams = hparams
        self.config_text = config_text  # the composed config, for TensorBoard's Text tab
        self.model = model.to(device)
        if self._use_channels_last(cfg, model, device):
            # NHWC weights let cuDNN use its tensor-core kernels; activations follow the weights' layout. On CPU
            # it is a choice: measured 10-15% faster for the VAE and DCGAN, 6% slower for the Gated PixelCNN.
            self.model.to(memory_format=torch.channels_last)
            log.info("channels-last memory format")
        self.dataset = dataset.to(device)
        self.use_labels = bool(getattr(model, "conditional", False))
        self.parallel = distributed.context()
        if cfg.batch_size % self.parallel.world_size:
            raise ConfigError(f"trainer.batch_size={cfg.batch_size} (the global batch) must divide evenly among "
                              f"{self.parallel.world_size} processes")

        self.batches = TrainBatches(
            self.dataset.train, cfg.batch_size, seed=seed, use_labels=self.use_labels,
            dynamic_binarization=dataset.dynamic_binarization, rank=self.parallel.rank,
            world_size=self.parallel.world_size,
        )
        if self.batches.steps_per_epoch == 0:
            raise ConfigError(
                f"trainer.batch_size={cfg.batch_size} is larger than the training split ({len(dataset.train)} images)"
            )
        limits = [n for n in (cfg.max_steps, cfg.max_epochs and cfg.max_epochs * self.batches.steps_per_epoch) if n]
        self.planned_steps: Optional[int] = min(limits) if limits else None

        self.optimizers = {
            name: build_optimizer(spec.params, spec.config, cfg.lr, device)
            for name, spec in model.optimizer_specs().items()
        }
        self.schedulers = {name: build_scheduler(opt, cfg, self.planned_steps) for name, opt in self.optimizers.items()}
        self.updates: list[Update] = model.updates()
        for update in self.updates:
            if update.optimizer not in self.optimizers:
                raise ValueError(f"update uses unknown optimizer {update.optimizer!r}")
        self.params = {name: [p for g in opt.param_groups for p in g["params"]] for name, opt in self.optimizers.items()}
        self.ddp: Optional[DistributedDataParallel] = None
        if self.parallel.enabled:
            # With several optimizers each update leaves the other networks without gradients.
            self.ddp = DistributedDataParallel(
                _LossRunner(self.model, self.updates), device_ids=[device] if device.type == "cuda" else None,
                find_unused_parameters=len(self.optimizers) > 1,
            )
        self.ema = EMA(model.ema_module(), cfg.ema_decay) if cfg.ema_decay else None
        self.evaluator = Evaluator(
            self.model, self.dataset, batch_size=cfg.eval_batch_size, precision=cfg.precision, device=device,
            seed=seed, limit=cfg.eval_limit, ema=self.ema, sample_metrics=sample_metrics, progress=cfg.progress_bar,
        )
        # Compiled after the first step, which runs eagerly: data-dependent initialisation (RealNVP's ActNorm)
        # happens there, so the compiled graphs have no branch on it.
        self._to_compile = model.compile_targets() if cfg.compile else []
        if self._to_compile:
            log.info("torch.compile after the first step: %s (evaluation runs eagerly)",
                     ", ".join(type(m).__name__ for m in self._to_compile))
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision is Precision.fp16)

        self.logger: Optional[RunLogger] = None  # opened by fit(), after a resume has set the step
        self.checkpoints = CheckpointManager(run_dir / "checkpoints", cfg.keep_checkpoints)
        self.step = 0
        self.minutes_before_resume = 0.0  # wall time already spent, counted towards trainer.max_minutes
        self._started = time.monotonic()
        self.best_metric = math.inf
        self.last_good: Optional[str] = None  # the newest checkpoint with finite weights and validation metrics
        self.nonfinite_in_a_row = 0
        self.nonfinite_skipped = 0
        self.train_seconds = 0.0
        self._window: dict[str, list[Tensor]] = {}
        self._window_steps, self._window_seconds = 0, 0.0
        self._stop_signal: Optional[int] = None
        self._last_validation: Optional[tuple[int, dict[str, float]]] = None  # (step, metrics)
        # Fixed images and noise for the grids, so that steps compare.
        vis = next(eval_batches(self.dataset.val, cfg.num_samples, use_labels=self.use_labels))
        self.vis_batch = vis

    @staticmethod
    def _use_channels_last(cfg: TrainerConfig, model: nn.Module, device: torch.device) -> bool:
        convolutional = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
        if cfg.channels_last is None:
            return convolutional and device.type == "cuda"
        return cfg.channels_last and convolutional

    # --- the loop -------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        # Events a killed run wrote after its last checkpoint are hidden, so curves have no duplicate points.
        self.logger = RunLogger(self.run_dir, purge_step=self.step + 1 if self.step else None,
                                enabled=self.parallel.is_main)
        log.info("training on %s (%s) for %s", self.device, cfg.precision.value, self._limits_text())
        if self.config_text:
            self.logger.text("config", f"```yaml\n{self.config_text}```")
        self._started = time.monotonic() - 60.0 * self.minutes_before_resume
        # A bar on a terminal; elsewhere a line at the logging steps, at most every trainer.log_seconds.
        progress = Progress(self.planned_steps, "train", "step", initial=self.step, leave=True,
                            bar=cfg.progress_bar and self.parallel.is_main, lines_on_update=False,
                            interval=cfg.log_seconds if self.parallel.is_main else math.inf)
        first_step = True
        with logging_redirect_tqdm(), progress, self._stop_on_signals():
            while True:
                time_is_up, signalled = self._stop_requests()
                if signalled:
                    self._save_and_exit()
                if time_is_up or self._step_limit_reached():
                    break
                tick = time.perf_counter()
                self._train_step(next(self.batches))
                self.step += 1
                elapsed = time.perf_counter() - tick
                self.train_seconds += elapsed
                self._window_steps += 1
                self._window_seconds += elapsed
                progress.update()
                if self.step % cfg.log_every == 0:
                    progress.set_postfix(self._postfix(self._log_train()))
                elif first_step:  # numbers on the bar from the first step on, not only after log_every steps
                    progress.set_postfix(self._postfix(self._window_means()), line=False)
                first_step = False
                if self._step_limit_reached():
                    break  # the final evaluation follows
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    self._evaluate_and_save()
        return self._finish()

    def _limits_text(self) -> str:
        cfg = self.cfg
        parts = [text for limit, text in [
            (cfg.max_steps, f"{cfg.max_steps} steps"),
            (cfg.max_epochs, f"{cfg.max_epochs} epochs ({self.batches.steps_per_epoch} steps each)"),
            (cfg.max_minutes, f"{cfg.max_minutes} minutes"),
        ] if limit]
        return " or ".join(parts) + (", whichever comes first" if len(parts) > 1 else "")

    def _step_limit_reached(self) -> bool:
        cfg = self.cfg
        return bool((cfg.max_steps and self.step >= cfg.max_steps) or (cfg.max_epochs and self.batches.epoch >= cfg.max_epochs))

    def _stop_requests(self) -> tuple[bool, bool]:
        """(time limit reached, stop signal received), agreed by every process: clocks and signals are per process."""
        time_is_up = bool(self.cfg.max_minutes and self._wall_minutes() >= self.cfg.max_minutes)
        time_is_up, signalled = distributed.any_process([time_is_up, self._stop_signal is not None], self.device)
        return time_is_up, signalled

    def _wall_minutes(self) -> float:
        """Minutes since the run first started, across resumes."""
        return (time.monotonic() - self._started) / 60.0

    def _train_step(self, batch: Batch) -> None:
        for index, update in enumerate(self.updates):
            if self.step % update.every:
                continue
            optimizer = self.optimizers[update.optimizer]
            params = self.params[update.optimizer]
            with self._only_trainable(update.optimizer), autocast(self.cfg.precision, self.device):
                if self.ddp is None:
                    out = update.loss(batch, self.step)
                else:  # through DDP, which averages the gradients of all processes during backward
                    out = LossOutput(*self.ddp(index, batch.x, batch.y, self.step))
            self.scaler.scale(out.loss).backward()
            self.scaler.unscale_(optimizer)
            grad_norm = self._grad_norm(params)
            if not self._finite(out, grad_norm, update):
                optimizer.zero_grad(set_to_none=True)
                self.scaler.update()
                continue
            self.scaler.step(optimizer)
            self.scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if update.after_step is not None:
                update.after_step()
            for name, value in out.logs.items():
                self._window.setdefault(name, []).append(value.detach().float())
            self._window.setdefault(f"grad_norm/{update.optimizer}", []).append(grad_norm.detach().float())
        if self.ema is not None:
            self.ema.update()
        with warnings.catch_warnings():  # the schedule follows the step count, skipped steps included
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
            for scheduler in self.schedulers.values():
                scheduler.step()
        for module in self._to_compile:
            module.compile()  # in place (no `_orig_mod.` prefix), so checkpoints load with or without compile
        self._to_compile = []

    def _grad_norm(self, params: list[torch.nn.Parameter]) -> Tensor:
        """Global L2 norm of the gradients (clipped to trainer.grad_clip when set); grads are untouched otherwise."""
        if self.cfg.grad_clip:
            return torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.device)
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))

    @contextlib.contextmanager
    def _only_trainable(self, optimizer: str) -> Iterator[None]:
        """Freeze the parameters of the other optimizers, so an update computes no gradients it throws away."""
        if len(self.params) == 1:
            yield
            return
        own = {id(p) for p in self.params[optimizer]}
        frozen = [p for name, ps in self.params.items() if name != optimizer for p in ps if id(p) not in own]
        for p in frozen:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def _finite(self, out: LossOutput, grad_norm: Tensor, update: Update) -> bool:
        """Check loss and gradient norm before the optimizer step (one device sync per update)."""
        checks = [out.loss.detach().float().reshape(())]
        if not self.scaler.is_enabled():  # with fp16 the scaler itself skips steps with overflowing gradients
            checks.append(grad_norm.detach().float().reshape(()))
        finite = bool(torch.isfinite(torch.stack(checks)).all())
        if not distributed.any_process([not finite], self.device)[0]:  # every process steps, or none
            self.nonfinite_in_a_row = 0
            return True
        self.nonfinite_in_a_row += 1
        self.nonfinite_skipped += 1
        bad_terms = [name for name, value in out.logs.items() if not bool(torch.isfinite(value).all())]
        what = "loss" if not bool(torch.isfinite(out.loss)) else "gradient"
        message = (
            f"non-finite {what} at step {self.step} in the '{update.optimizer}' update"
            f" (non-finite terms: {', '.join(bad_terms) or 'none of the logged terms'})"
        )
        if self.cfg.nonfinite is NonFinitePolicy.halt or self.nonfinite_in_a_row >= self.cfg.max_nonfinite:
            reason = "trainer.nonfinite=halt" if self.cfg.nonfinite is NonFinitePolicy.halt else (
                f"{self.nonfinite_in_a_row} in a row (trainer.max_nonfinite={self.cfg.max_nonfinite})")
            raise NonFiniteError(f"{message}; stopping: {reason}. {self._last_good_text()}. Try a lower "
                                 f"trainer.lr, trainer.grad_clip, or trainer.precision=fp32")
        log.warning("%s; step skipped (%d in a row, %d in total)", message, self.nonfinite_in_a_row, self.nonfinite_skipped)
        return False

    # --- logging --------------------------------------------------------------------------------------
    def _window_means(self) -> dict[str, float]:
        """train/<term> means and images/s of the steps since the last log (one device sync)."""
        names = list(self._window)
        means = torch.stack([torch.stack(self._window[n]).mean() for n in names]).tolist() if names else []
        values = {f"train/{name}": mean for name, mean in zip(names, means)}
        values["perf/images_per_sec"] = self._window_steps * self.cfg.batch_size / max(self._window_seconds, 1e-9)
        return values

    def _log_train(self) -> dict[str, float]:
        values = self._window_means()
        if self.cfg.lr_schedule is not LRSchedule.constant or self.cfg.warmup_steps:  # constant: nothing to plot
            for name, optimizer in self.optimizers.items():
                values[f"lr/{name}"] = optimizer.param_groups[0]["lr"]
        values["perf/max_memory_mb"] = peak_memory_mb(self.device)
        values["train/epoch"] = self.batches.epoch + self.batches.position / self.batches.steps_per_epoch
        if self.nonfinite_skipped:
            values["train/nonfinite_steps_skipped"] = self.nonfinite_skipped
        self.logger.scalars(values, self.step)
        self._window, self._window_steps, self._window_seconds = {}, 0, 0.0
        return values

    def _postfix(self, values: dict[str, float]) -> dict[str, str]:
        """The model's main training numbers and the speed, for the bar and the progress lines."""
        shown = {name: f"{values[f'train/{name}']:.4g}" for name in self.model.progress_terms
                 if f"train/{name}" in values}
        return {**shown, "img/s": f"{values['perf/images_per_sec']:,.0f}"}

    # --- evaluation -----------------------------------------------------------------------------------
    def _evaluate_and_save(self) -> dict[str, float]:
        metrics = self.evaluator.split("val") | self.evaluator.sample_quality()
        self.logger.scalars({f"val/{k}": v for k, v in metrics.items()}, self.step)
        if self.parallel.is_main:
            self.logger.images(self.evaluator.grids(self.vis_batch), self.step)
        good = all(math.isfinite(v) for v in metrics.values()) and all_finite(list(self.model.state_dict().values()))
        main = metrics.get(self.model.main_metric, math.inf)
        is_best = good and main < self.best_metric
        if is_best:
            self.best_metric = main
        name = f"step_{self.step:08d}.pt"
        if good:
            self.last_good = name
        if self.parallel.is_main:
            self.checkpoints.save(self.state_dict(), self.step, best=is_best, keep_also=self.last_good)
        self._last_validation = (self.step, metrics)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        verdict = " (best so far)" if is_best else "" if good else f" (not finite: {self._last_good_text()})"
        log.info("step %d: val %s%s", self.step, shown, verdict)
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
            "model": self.identity["model"],
            "dataset": self.dataset.name,
            "main_metric": self.model.main_metric,
            "step": self.step,
            "epoch": self.batches.epoch,
            "train_seconds": round(self.train_seconds, 2),
            "nonfinite_steps_skipped": self.nonfinite_skipped,
            "val": val,
            "test": test,
            "eval_images": {"val": self.evaluator.images("val"), "test": self.evaluator.images("test")},
            "notes": notes,
        }
        if self.parallel.is_main:
            write_json(self.run_dir / "metrics.json", result)
        self.logger.text("notes", "\n\n".join(notes))
        final_metrics = {f"val/{k}": v for k, v in val.items()} | {f"test/{k}": v for k, v in test.items()}
        self.logger.hparams(self.hparams, final_metrics, self.step)
        self.logger.close()
        return result

    # --- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly (see checkpoint.py for how it is written)."""
        return {
            "identity": self.identity,
            "model": self.model.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "schedulers": {name: s.state_dict() for name, s in self.schedulers.items()},
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "batches": self.batches.state_dict(),
            "best_metric": self.best_metric,
            "last_good": self.last_good,
            "nonfinite_skipped": self.nonfinite_skipped,
            "train_seconds": self.train_seconds,
            "wall_minutes": self._wall_minutes(),
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any], source: Path) -> None:
        """Continue from a checkpoint's state (load_checkpoint(for_training=True) checked its contents)."""
        try:
            self._load_state(state)
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as err:
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise CheckpointError(f"{source} does not fit this run: {first_line}") from None
        log.info("resumed from %s at step %d (epoch %d)", source, self.step, self.batches.epoch)

    def _load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        for name, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state["schedulers"][name])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        elif self.ema is not None:
            log.warning("the checkpoint has no EMA weights; the average starts from the current weights")
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.batches.load_state_dict(state["batches"])
        self.best_metric = float(state["best_metric"])
        self.last_good = state.get("last_good")  # checkpoints from before gentrain tracked it: unknown
        self.nonfinite_skipped = int(state["nonfinite_skipped"])
        self.train_seconds = float(state["train_seconds"])
        self.minutes_before_resume = float(state["wall_minutes"])
        restore_rng(state["rng"])
        if self.parallel.rank > 0:  # the checkpoint holds rank 0's generators; the others continue independently
            torch.manual_seed(self.seed + 1_000_003 * self.parallel.rank + self.step)

    # --- preemption -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """SIGTERM / SIGINT: finish the current step, checkpoint and exit; a second signal exits at once."""

        def handler(signum: int, frame: Any) -> None:
            if self._stop_signal is not None:
                print(f"\n{signal.Signals(signum).name} again: exiting now, without a checkpoint", flush=True)
                os._exit(128 + signum)
            self._stop_signal = signum
            log.warning("%s received: stopping after the current step (send it again to exit at once)",
                        signal.Signals(signum).name)

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _save_and_exit(self) -> None:
        path = self.checkpoints.save(self.state_dict(), self.step, best=False, keep_also=self.last_good) \
            if self.parallel.is_main else None
        distributed.barrier()  # no process exits (and gets its siblings killed) before the checkpoint is written
        self.logger.close()
        raise Preempted(
            f"stopped by {signal.Signals(self._stop_signal).name} at step {self.step}; checkpoint {path}. "
            f"Continue with: gentrain trainer.resume={self.run_dir}",
            self._stop_signal,
        )
