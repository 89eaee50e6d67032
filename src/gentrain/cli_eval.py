"""`gentrain-eval run=<run dir>`: recompute a finished run's test metrics with settings of your choice.

    gentrain-eval run=outputs/2026-11-23/14-02-11 model.iw_samples=1000           # a tighter VAE bound
    gentrain-eval run=... metrics.fid.enabled=true metrics.fid.num_samples=50000   # FID with 50k samples
    gentrain-eval run=... splits=[val,test] checkpoint=last dataset.root=/data

Options: run (required), checkpoint (best | last | a file; default best), splits (default [test]),
batch_size, device, seed; any other key=value overrides the run's saved config. The model gets the expensive
end-of-run treatment (final=True) on every split. Results go to <run>/eval/metrics.json and to TensorBoard
(<run>/eval/, tags eval/<split>/<metric>); the training checkpoints are only read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from gentrain.data import load_dataset, resolve_root
from gentrain.errors import ConfigError
from gentrain.evaluation import Evaluator
from gentrain.logger import RunLogger, write_json
from gentrain.runs import load_run, run_command
from gentrain.runtime import pick_device

log = logging.getLogger("gentrain.eval")

OPTIONS: dict[str, Any] = {"run": None, "checkpoint": "best", "splits": ["test"], "batch_size": None,
                           "device": "auto", "seed": None}


def evaluate_run(options: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    from gentrain.metrics.sample_quality import build_sample_quality

    device = pick_device(str(options["device"]))
    run = load_run(Path(options["run"]), checkpoint=str(options["checkpoint"]), overrides=overrides, device=device)
    splits = options["splits"] if isinstance(options["splits"], list) else [options["splits"]]
    if not splits or any(s not in ("train", "val", "test") for s in splits):
        raise ConfigError(f"splits= takes a list of train, val, test; got {options['splits']}")
    config = run.config
    seed = config.seed if options["seed"] is None else int(options["seed"])
    dataset = load_dataset(config.dataset).to(device)
    if dataset.info != run.data:
        raise ConfigError(f"the data now has shape {dataset.info}, but the run was trained on {run.data}")
    sample_metrics = build_sample_quality(
        config.metrics.fid, model=run.model, dataset=dataset, data_root=resolve_root(getattr(config.dataset, "root", None)),
        device=device, seed=seed, progress=config.trainer.progress_bar,
    )
    evaluator = Evaluator(
        run.model, dataset, batch_size=int(options["batch_size"] or config.trainer.eval_batch_size),
        precision=config.trainer.precision, device=device, seed=seed, limit=config.trainer.eval_limit, ema=run.ema,
        sample_metrics=sample_metrics, progress=config.trainer.progress_bar,
    )
    results: dict[str, Any] = {
        "checkpoint": str(run.checkpoint.relative_to(run.run_dir)), "step": run.step, "overrides": overrides,
        "ema_weights": run.ema is not None,
    }
    for split in splits:
        results[split] = evaluator.split(split, final=True)
        log.info("%s: %s", split, ", ".join(f"{k} {v:.4f}" for k, v in results[split].items()))
    quality = evaluator.sample_quality()
    if quality:
        results["sample_quality"] = quality
        log.info("sample quality: %s", ", ".join(f"{k} {v:.4f}" for k, v in quality.items()))
    results["eval_images"] = {split: evaluator.images(split) for split in splits}
    results["notes"] = evaluator.notes()

    out_dir = run.run_dir / "eval"
    out_dir.mkdir(exist_ok=True)
    write_json(out_dir / "metrics.json", results)
    logger = RunLogger(out_dir)
    for split in splits:
        logger.scalars({f"eval/{split}/{k}": v for k, v in results[split].items()}, run.step)
    logger.scalars({f"eval/samples/{k}": v for k, v in quality.items()}, run.step)
    logger.text("eval/notes", "\n\n".join(results["notes"] + [f"overrides: {' '.join(overrides) or 'none'}"]))
    logger.close()
    return results


def main(argv: Optional[list[str]] = None) -> None:
    def action(options: dict[str, Any], overrides: list[str]) -> str:
        evaluate_run(options, overrides)
        return f"wrote {Path(options['run']) / 'eval' / 'metrics.json'}"

    run_command("gentrain-eval", __doc__, OPTIONS, action, argv)


if __name__ == "__main__":
    main()
