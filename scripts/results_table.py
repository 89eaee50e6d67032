"""Turn finished run directories into a markdown results table (the README's tables are made with this).

Each row comes from the run's own files: the command from .hydra/overrides.yaml, the numbers from metrics.json,
the wall time from status.json. Nothing is typed by hand.

    python scripts/results_table.py outputs/2026-11-23/*/ --metrics test/neg_elbo_nats test/iw_nll_nats
    python scripts/results_table.py <runs> --metrics eval/test/bits_per_dim   # numbers from gentrain-eval
    python scripts/results_table.py <runs> --eval-dir eval_steps10 --metrics eval/sample_quality/fid
        # gentrain-eval's numbers written with out=<run>/eval_steps10; its overrides join the command
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gentrain.errors import GentrainError
from gentrain.rundir import read_json, read_yaml


def folder_name(value: str) -> str:
    """--eval-dir: one folder inside the run, never a path that leaves it."""
    if not value or value in (".", "..") or "/" in value or "\\" in value:
        raise argparse.ArgumentTypeError(f"{value!r} is not a folder name inside a run (such as eval_steps10)")
    return value


def read_run(run_dir: Path, eval_dir: str = "eval", *, eval_required: bool = False) -> dict:
    """A finished run's files, read as data (gentrain.rundir: no YAML tags, nothing instantiated); gentrain-eval's
    metrics.json from the folder `eval_dir` inside the run (an error when eval_required and it is missing)."""
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        raise GentrainError(f"{run_dir} has no metrics.json: not a finished gentrain run")
    metrics = read_json(metrics_file)
    overrides = read_yaml(run_dir / ".hydra" / "overrides.yaml") or []
    config = read_yaml(run_dir / ".hydra" / "config.yaml")
    status_file = run_dir / "status.json"
    wall = read_json(status_file).get("wall_seconds") if status_file.is_file() else None
    eval_file = run_dir / eval_dir / "metrics.json"  # written by gentrain-eval
    if eval_required and not eval_file.is_file():
        raise GentrainError(f"{run_dir} has no {eval_dir}/metrics.json (gentrain-eval run=<run> out=<run>/{eval_dir})")
    evaluation = read_json(eval_file) if eval_file.is_file() else {}
    shapes = [(metrics, dict), (overrides, list), (config, dict), (evaluation, dict)]
    if not all(isinstance(value, kind) for value, kind in shapes):
        raise GentrainError(f"{run_dir} holds files that are not what a gentrain run writes")
    return {"dir": run_dir, "metrics": metrics, "eval": evaluation, "overrides": [str(o) for o in overrides],
            "config": config, "wall_seconds": wall}


def metric(run: dict, name: str) -> str:
    """`test/bits_per_dim` from metrics.json; `eval/test/bits_per_dim` from gentrain-eval's eval/metrics.json."""
    source = run["metrics"]
    if name.startswith("eval/"):
        source, name = run["eval"], name[len("eval/"):]
    split, _, key = name.partition("/")
    value = source.get(split, {}).get(key)
    return "" if value is None else f"{value:.4g}" if abs(value) < 10 else f"{value:.2f}"


def dataset_label(run: dict) -> str:
    binarize = run["config"]["dataset"]["binarize"]
    name = run["metrics"]["dataset"]
    return f"{name}, binarized ({binarize})" if binarize != "none" else name


def training_length(run: dict) -> str:
    """`steps x batch`, plus the completed epochs when there are any."""
    m, batch = run["metrics"], run["config"]["trainer"]["batch_size"]
    return f"{m['step']} x {batch}" + (f" ({m['epoch']} epochs)" if m["epoch"] else "")


def table(runs: list[dict], metric_names: list[str]) -> str:
    header = ["model", "dataset", "steps x batch", "train min", "wall min", *metric_names, "command"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        m = run["metrics"]
        hidden = ("hydra.", "dataset.root=", "trainer.progress_bar=", "trainer.resume=")
        command = "gentrain " + " ".join(o for o in run["overrides"] if not o.startswith(hidden))
        if run["eval"].get("overrides"):
            command += "`, then `gentrain-eval run=<run> " + " ".join(map(str, run["eval"]["overrides"]))
        wall = "" if run["wall_seconds"] is None else f"{run['wall_seconds'] / 60:.1f}"
        row = [m["model"], dataset_label(run), training_length(run), f"{m['train_seconds'] / 60:.1f}", wall,
               *(metric(run, name) for name in metric_names), f"`{command}`"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--metrics", nargs="+",
                        help="columns such as test/bits_per_dim or eval/test/bits_per_dim "
                             "(default: the test main metric)")
    parser.add_argument("--eval-dir", type=folder_name,
                        help="the folder inside each run where gentrain-eval wrote (its out=; default: eval, "
                             "optional; a folder named here must be in every run)")
    args = parser.parse_args()
    try:
        runs = [read_run(d, args.eval_dir or "eval", eval_required=args.eval_dir is not None) for d in args.runs]
        names = args.metrics or sorted({f"test/{r['metrics']['main_metric']}" for r in runs})
        print(table(runs, names), end="")
    except (GentrainError, KeyError, TypeError, ValueError) as err:
        print(f"results_table: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
