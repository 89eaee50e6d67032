"""`gentrain-eval run=<run dir>`: recompute a finished run's test metrics with settings of your choice.

    gentrain-eval run=outputs/2026-11-23/14-02-11 model.iw_samples=1000           # a tighter VAE bound
    gentrain-eval run=... metrics.fid.enabled=true metrics.fid.num_samples=50000   # FID with 50k samples
    gentrain-eval run=... splits=[val,test] checkpoint=last dataset.root=/data
    gentrain-eval run=... splits=[] metrics.fid.enabled=true model.sampling_steps=10 out=...   # FID only

Options: run (required), checkpoint (best | last | a file; default best), splits (default [test]; [] for the
sample quality alone, e.g. at several sampling steps without paying for the likelihood each time), batch_size,
device, seed, out, overwrite; any other key=value overrides the run's saved config. The model gets the
expensive end-of-run treatment (final=True) on every split. Results go to <run>/eval/metrics.json and to
TensorBoard (<run>/eval/, tags eval/<split>/<metric>), or into `out=<folder>`; the training checkpoints are
only read. An earlier evaluation's files there are never replaced unless `overwrite=true`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from gentrain.config import DEVICE_PATTERN, SEED_MAX, SIZE_MAX, setting
from gentrain.composition import load_dataset
from gentrain.data.schemas import resolve_root
from gentrain.errors import ConfigError
from gentrain.evaluation import Evaluator
from gentrain.logger import RunLogger, write_json
from gentrain.runs import load_run, output_dir, refuse_existing, run_command
from gentrain.runtime import pick_device

log = logging.getLogger("gentrain.eval")

class Split(Enum):
    train = "train"
    val = "val"
    test = "test"


@dataclass
class EvalOptions:
    run: str = MISSING  # the run directory
    checkpoint: str = "best"  # best | last | a checkpoint file
    splits: list[Split] = setting(factory=lambda: [Split.test])  # []: the sample quality alone
    batch_size: Optional[int] = setting(None, min=1, max=SIZE_MAX)  # null: the run's trainer.eval_batch_size
    device: str = setting("auto", pattern=DEVICE_PATTERN, meaning="auto, cpu, cuda, cuda:N or mps")
    seed: Optional[int] = setting(None, min=0, max=SEED_MAX)  # null: the run's seed
    out: Optional[str] = None  # the folder for metrics.json and events; null: <run>/eval
    overwrite: bool = False  # replace an earlier evaluation's metrics.json and events in that folder


def evaluate_run(options: EvalOptions, overrides: list[str]) -> tuple[dict[str, Any], Path]:
    """-> the results and the metrics.json they were written to."""
    from gentrain.metrics.quality_setup import build_sample_quality, sample_quality_enabled

    device = pick_device(options.device)
    run = load_run(Path(options.run), checkpoint=options.checkpoint, overrides=overrides, device=device)
    if not options.splits and not sample_quality_enabled(run.config.metrics.fid, run.model):
        raise ConfigError("splits=[] with the sample quality off leaves nothing to evaluate: add "
                          "metrics.fid.enabled=true, or name a split (splits=[test])")
    out_dir = output_dir(options.out, run.run_dir / "eval", run_dir=run.run_dir)
    earlier = [out_dir / "metrics.json", *sorted(out_dir.glob("events.out.tfevents.*"))]
    refuse_existing(earlier, options.overwrite, " (an earlier evaluation)")
    splits = [split.value for split in options.splits]
    config = run.config
    seed = config.seed if options.seed is None else options.seed
    dataset = load_dataset(config.dataset).to(device)
    if dataset.info != run.data:
        raise ConfigError(f"the data now has shape {dataset.info}, but the run was trained on {run.data}")
    data_root = resolve_root(getattr(config.dataset, "root", None))
    sample_metrics = build_sample_quality(
        config.metrics.fid, model=run.model, dataset=dataset, data_root=data_root,
        device=device, seed=seed, progress=config.trainer.progress_bar,
    )
    evaluator = Evaluator(
        run.model, dataset, batch_size=options.batch_size or config.trainer.eval_batch_size,
        precision=config.trainer.precision, device=device, seed=seed, limit=config.trainer.eval_limit,
        ema=run.ema,
        sample_metrics=sample_metrics, progress=config.trainer.progress_bar,
    )
    results: dict[str, Any] = {
        "checkpoint": str(run.checkpoint.relative_to(run.run_dir)), "step": run.step, "overrides": overrides,
        "ema_weights": run.ema is not None,
    }
    for split in splits:
        log.info("evaluating %s (step %d) on %s: %d images", results["checkpoint"], run.step, split,
                 evaluator.images(split))
        results[split] = evaluator.split(split, final=True)
        log.info("%s: %s", split, ", ".join(f"{k} {v:.4f}" for k, v in results[split].items()))
    quality = evaluator.sample_quality()
    if quality:
        results["sample_quality"] = quality
        log.info("sample quality: %s", ", ".join(f"{k} {v:.4f}" for k, v in quality.items()))
    results["eval_images"] = {split: evaluator.images(split) for split in splits}
    results["notes"] = evaluator.notes()

    for events in earlier[1:]:  # overwrite=true: the earlier evaluation's curves would mix with these
        events.unlink(missing_ok=True)
    write_json(out_dir / "metrics.json", results, root=out_dir, replace=options.overwrite)
    # The run's own tag names, so that TensorBoard draws these values in the same charts as the run's.
    logger = RunLogger(out_dir)
    for split in splits:
        logger.scalars({f"{split}/{k}": v for k, v in results[split].items()}, run.step)
    logger.scalars({f"val/{k}": v for k, v in quality.items()}, run.step)
    logger.text("notes", "\n\n".join(results["notes"] + [f"overrides: {' '.join(overrides) or 'none'}"]))
    logger.close()
    return results, out_dir / "metrics.json"


def main(argv: Optional[list[str]] = None) -> None:
    def action(options: EvalOptions, overrides: list[str]) -> str:
        return f"wrote {evaluate_run(options, overrides)[1]}"

    run_command("gentrain-eval", __doc__, EvalOptions, action, argv)


if __name__ == "__main__":
    main()
