"""Turn finished run directories into a markdown results table (the README's tables are made with this).

Each row comes from the run's own files: the command from .hydra/overrides.yaml, the numbers from metrics.json,
the wall time from status.json. Nothing is typed by hand.

    python scripts/results_table.py outputs/2026-11-23/*/ --metrics test/neg_elbo_nats test/iw_nll_nats
    python scripts/results_table.py <runs> --metrics eval/test/bits_per_dim   # numbers from gentrain-eval
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml


def read_run(run_dir: Path) -> dict:
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        raise SystemExit(f"{run_dir} has no metrics.json: not a finished gentrain run")
    metrics = json.loads(metrics_file.read_text())
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or []
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    status_file = run_dir / "status.json"
    wall = json.loads(status_file.read_text()).get("wall_seconds") if status_file.is_file() else None
    eval_file = run_dir / "eval" / "metrics.json"  # written by gentrain-eval
    evaluation = json.loads(eval_file.read_text()) if eval_file.is_file() else {}
    return {"dir": run_dir, "metrics": metrics, "eval": evaluation, "overrides": overrides, "config": config,
            "wall_seconds": wall}


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
        hidden = ("hydra.", "dataset.root=", "trainer.progress_bar=")
        command = "gentrain " + " ".join(o for o in run["overrides"] if not o.startswith(hidden))
        wall = "" if run["wall_seconds"] is None else f"{run['wall_seconds'] / 60:.1f}"
        row = [m["model"], dataset_label(run), training_length(run), f"{m['train_seconds'] / 60:.1f}", wall,
               *(metric(run, name) for name in metric_names), f"`{command}`"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--metrics", nargs="+", help="columns such as test/bits_per_dim or eval/test/bits_per_dim (default: the test main metric)")
    args = parser.parse_args()
    runs = [read_run(d) for d in args.runs]
    names = args.metrics or sorted({f"test/{r['metrics']['main_metric']}" for r in runs})
    print(table(runs, names), end="")


if __name__ == "__main__":
    main()
