"""Learning curves of run directories: the validation metric against training minutes and against images seen,
one figure per dataset with every run on it, and the published numbers as horizontal marks.

    python scripts/plot_curves.py outputs/2026-12-06/*/ --out docs/curves
    python scripts/plot_curves.py <runs> --metric val/bits_per_dim --published "RealNVP=1.06" --out plots

Everything comes from the runs' own files: the curve from the TensorBoard events (val/<metric> at each
evaluation), images seen = step x trainer.batch_size from .hydra/config.yaml, minutes from the
perf/train_minutes scalar the trainer logs at each evaluation (training time only, evaluations excluded). A
run still training is drawn as far as it got. Binarized data is drawn in nats per image (what papers report),
8-bit data in bits/dim. Needs matplotlib (`pip install 'gentrain[plots]'`).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections import defaultdict
from pathlib import Path

from gentrain.errors import GentrainError
from gentrain.files import write_file
from gentrain.rundir import read_json, read_yaml

# Published results to mark, by dataset label and metric tag: (label, value). Sources in the README's tables.
PUBLISHED = {
    ("mnist, binarized", "nats"): [("PixelRNN Diagonal BiLSTM", 79.20), ("PixelRNN Row LSTM", 80.54),
                                   ("PixelCNN", 81.30), ("IWAE", 82.90), ("MADE, 32 masks", 86.64),
                                   ("MADE", 88.04)],
    ("mnist", "bits_per_dim"): [("Glow", 1.05), ("RealNVP", 1.06)],
    ("cifar10", "bits_per_dim"): [("PixelCNN++", 2.92), ("Gated PixelCNN", 3.03), ("PixelCNN", 3.14),
                                  ("RealNVP", 3.49)],
}
NATS_TAGS = ("val/nll_nats", "val/neg_elbo_nats")  # per image; the VAE's is a bound
HIDDEN = ("hydra.", "trainer.progress_bar", "trainer.resume")  # overrides that say nothing about the curve


def read_curve(run_dir: Path, metric: str | None) -> dict:
    """One run's validation curve and what it is: {label, dataset, tag, unit, points [(step, value)], minutes
    {step: minutes}, batch}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # A resumed run's events after its last checkpoint are superseded: TensorBoard drops them (as it should)
    # and says so per run; that is expected here, not news
    logging.getLogger("tensorboard").setLevel(logging.ERROR)

    config_file, overrides_file = run_dir / ".hydra" / "config.yaml", run_dir / ".hydra" / "overrides.yaml"
    if not config_file.is_file():
        raise GentrainError(f"{run_dir} is not a gentrain run directory (no .hydra/config.yaml)")
    config, overrides = read_yaml(config_file), read_yaml(overrides_file) or []
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags().get("scalars", []))
    binarized = config["dataset"].get("binarize", "none") != "none"
    if metric is None:  # nats for binarized data, else bits/dim, else the run's own main metric (fm_loss, fid)
        found = [t for t in NATS_TAGS if t in tags] if binarized else []
        status = read_json(run_dir / "status.json") if (run_dir / "status.json").is_file() else {}
        main = f"val/{status.get('main_metric', 'fid')}"
        metric = found[0] if found else "val/bits_per_dim" if "val/bits_per_dim" in tags else main
    if metric not in tags:
        raise GentrainError(f"{run_dir} has no {metric} scalars yet (its tags: {', '.join(sorted(tags))})")
    hydra = read_yaml(run_dir / ".hydra" / "hydra.yaml") if (run_dir / ".hydra" / "hydra.yaml").is_file() else {}
    dataset = ((hydra or {}).get("hydra", {}).get("runtime", {}).get("choices", {}).get("dataset")
               or _choice(overrides, "dataset") or "mnist")
    label_data = f"{dataset}, binarized" if binarized else dataset
    minutes = {e.step: e.value for e in events.Scalars("perf/train_minutes")} if "perf/train_minutes" in tags else {}
    return {
        "label": _label(overrides) or run_dir.name,
        "dataset": label_data, "tag": metric, "unit": "nats" if metric in NATS_TAGS else metric.split("/")[-1],
        "points": [(e.step, e.value) for e in events.Scalars(metric)], "minutes": minutes,
        "batch": int(config["trainer"]["batch_size"]),
    }


def _label(overrides: list) -> str:
    """The run's overrides, each key once with its last value: a run continued from another run's checkpoint
    holds that run's overrides followed by its own."""
    last: dict[str, str] = {}
    for override in overrides:
        if not override.startswith(HIDDEN):
            key = override.split("=", 1)[0]
            last.pop(key, None)  # a key given again moves to where it was given last
            last[key] = override
    return " ".join(last.values())


def _choice(overrides: list, group: str) -> str | None:
    chosen = [o.split("=", 1)[1] for o in overrides if isinstance(o, str) and o.startswith(f"{group}=")]
    return chosen[-1] if chosen else None


def _short_count(value: float, _position: int) -> str:
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


def plot(curves: list[dict], published: dict, out_dir: Path) -> list[Path]:
    """One PNG per (dataset, unit): the curves against minutes (left) and images seen (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for curve in curves:
        groups[(curve["dataset"], curve["unit"])].append(curve)
    written = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for (dataset, unit), members in sorted(groups.items()):
        figure, (by_minutes, by_images) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
        for curve in members:
            steps = [s for s, _ in curve["points"]]
            values = [v for _, v in curve["points"]]
            line, = by_images.plot([s * curve["batch"] for s in steps], values, marker=".", label=curve["label"])
            timed = [(curve["minutes"][s], v) for s, v in curve["points"] if s in curve["minutes"]]
            if timed:
                by_minutes.plot(*zip(*timed), marker=".", color=line.get_color())
        for name, value in published.get((dataset, unit), []):
            for axis in (by_minutes, by_images):
                axis.axhline(value, color="grey", linestyle="--", linewidth=0.8)
            by_images.annotate(f"{name} {value:g}", (1.0, value), xycoords=("axes fraction", "data"),
                               xytext=(4, 0), textcoords="offset points", va="center", fontsize=7, color="grey")
        by_minutes.set_xlabel("training minutes")
        by_images.set_xlabel("training images seen")
        by_minutes.set_ylabel(f"validation {unit}" + (" per image" if unit == "nats" else ""))
        by_images.set_xscale("log")
        # 1, 2, 5 x 10^k labelled as 20k, 500k, 2M: the default labels every minor tick of a short range on
        # top of each other
        by_images.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        by_images.xaxis.set_major_formatter(FuncFormatter(_short_count))
        by_images.xaxis.set_minor_formatter(NullFormatter())
        by_minutes.set_title(f"{dataset}: validation {unit}")
        figure.legend(fontsize=7, loc="lower center", ncol=1, frameon=False)
        for axis in (by_minutes, by_images):
            axis.grid(alpha=0.3)
        figure.tight_layout(rect=(0, 0.045 * len(members), 1, 1))
        slug = re.sub(r"\W+", "_", dataset).strip("_")
        path = out_dir / f"curves_{slug}_{unit}.png"
        # Complete or absent, never written through a link (a figure replaces an earlier one of the same name)
        write_file(path, lambda f: figure.savefig(f, dpi=110, format="png", bbox_inches="tight"))
        plt.close(figure)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--metric", help="the scalar tag to draw (default: nats per image on binarized data, "
                                         "else val/bits_per_dim, else val/fid)")
    parser.add_argument("--published", nargs="*", default=[], metavar="LABEL=VALUE",
                        help="more horizontal marks, on every figure of the chosen metric")
    parser.add_argument("--out", type=Path, default=Path("curves"), help="folder for the PNG files")
    args = parser.parse_args()
    try:
        curves = [read_curve(run, args.metric) for run in args.runs]
    except GentrainError as err:
        sys.exit(f"plot_curves: error: {err}")
    published = {key: list(values) for key, values in PUBLISHED.items()}
    for item in args.published:
        name, _, value = item.rpartition("=")
        for key in {(c["dataset"], c["unit"]) for c in curves}:
            published.setdefault(key, []).append((name, float(value)))
    for path in plot(curves, published, args.out):
        print(path)


if __name__ == "__main__":
    main()
