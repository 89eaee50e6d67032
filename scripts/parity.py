"""Learning-curve parity: gentrain against a plain loop of the same network (scripts/plain/curve.py), several seeds
each, for every model family. The README's parity table and figure are made with this.

Both sides get the same composed config: network and initial weights, losses, optimizer settings, batch size,
training and validation images (split and static binarization), steps and evaluation points; the plain side
differs only in its loop (its own shuffling, no EMA, clipping, schedules or checks). At each evaluation point
the table gives both sides' mean over seeds and their spread (min to max); gentrain passes a point when its
mean is within the plain loop's spread or better (every metric here is minimised).

    OMP_NUM_THREADS=1 python scripts/parity.py --work /tmp/parity --jobs 2 --out docs/parity
    python scripts/parity.py --work /tmp/parity --families made made_32_masks --seeds 0 1 2
    python scripts/parity.py --work /tmp/parity --report-only          # table and figure from finished runs

Every run is a process of its own with one torch thread; finished runs are kept in --work and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BINARIZED = "dataset.binarize=static"
# The CPU-hour presets' EMA, schedule and clipping off, so that both sides run the loop the plain one has
PLAIN_TRAINER = ("trainer.ema_decay=null", "trainer.lr_schedule=constant", "trainer.warmup_steps=0",
                 "trainer.grad_clip=null")


@dataclass(frozen=True)
class Family:
    overrides: tuple[str, ...]
    steps: int
    eval_every: int
    metric: str  # the validation metric compared (per image in nats on binarized data)


FAMILIES = {
    "mlp_vae": Family(("experiment=vae_binarized_mnist", BINARIZED), 2000, 400, "neg_elbo_nats"),
    "conv_vae": Family(("model=vae", BINARIZED, "trainer.batch_size=64"), 1000, 200, "neg_elbo_nats"),
    "pixelcnn": Family(("experiment=pixelcnn_cpu", BINARIZED), 600, 150, "nll_nats"),
    "gated_pixelcnn": Family(("experiment=gated_pixelcnn_cpu", BINARIZED), 450, 150, "nll_nats"),
    "pixelrnn_row_lstm": Family(("experiment=pixelrnn_cpu", BINARIZED, "model.layer=row_lstm"), 300, 100,
                                "nll_nats"),
    # Measured before the preset gained the paper's direct connections: the README's rows keep that network
    "made": Family(("experiment=made_binarized_mnist", "model.direct_connections=false"), 2700, 540,
                   "nll_nats"),
    "made_32_masks": Family(("experiment=made_binarized_mnist", "model.direct_connections=false",
                             "model.num_masks=32"), 2700, 540, "nll_nats"),
    "realnvp": Family(("experiment=realnvp_cpu",), 450, 150, "bits_per_dim"),
    "dcgan": Family(("experiment=dcgan_mnist", "trainer.max_minutes=null", "metrics.fid.num_samples=2000"),
                    1200, 300, "fid"),
    "pixelcnnpp": Family(("experiment=pixelcnnpp_cpu",), 300, 100, "bits_per_dim"),
    "pixel_transformer": Family(("experiment=pixel_transformer_cpu", BINARIZED), 150, 50, "nll_nats"),
    # The diffusion models' U-Net of cpu_*_mnist; DDPM's curve is L_simple's mse (its one-t bound is too noisy)
    "ddpm": Family(("experiment=cpu_ddpm_mnist", "model.ode_likelihood=false", *PLAIN_TRAINER), 200, 50,
                   "mse"),
    "vdm": Family(("experiment=cpu_vdm_mnist", "model.ode_likelihood=false", *PLAIN_TRAINER), 200, 50,
                  "bits_per_dim"),
    "flow_matching": Family(("experiment=cpu_flow_matching_mnist", "trainer.final_images=1", *PLAIN_TRAINER),
                            200, 50, "fm_loss"),
}
EVAL_LIMIT = 2000


def gentrain_run(family: Family, seed: int, folder: Path, data: Path) -> list[dict]:
    if not (folder / "metrics.json").is_file():
        command = [sys.executable, "-m", "gentrain", *family.overrides, f"seed={seed}",
                   f"trainer.max_steps={family.steps}", "trainer.max_epochs=null", "trainer.max_minutes=null",
                   f"trainer.eval_every={family.eval_every}", f"trainer.eval_limit={EVAL_LIMIT}",
                   "trainer.num_samples=1", "trainer.progress_bar=false", "trainer.resume=auto",
                   f"hydra.run.dir={folder}"]
        run(command, folder.with_suffix(".log"), data)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    minutes = {e.step: e.value * 60 for e in events.Scalars("perf/train_minutes")}
    return [{"step": e.step, "value": e.value, "train_seconds": minutes.get(e.step)}
            for e in events.Scalars(f"val/{family.metric}")]


def plain_run(family: Family, seed: int, file: Path, data: Path) -> list[dict]:
    if not file.is_file():
        command = [sys.executable, str(HERE / "plain" / "curve.py"), "--seed", str(seed), "--steps",
                   str(family.steps), "--eval-every", str(family.eval_every), "--eval-limit", str(EVAL_LIMIT),
                   "--", *family.overrides]
        out = run(command, file.with_suffix(".log"), data)
        file.write_text(out)
    points = [json.loads(line) for line in file.read_text().splitlines() if line.startswith("{")]
    return [{"step": p["step"], "value": p["metrics"][family.metric], "train_seconds": p["train_seconds"]}
            for p in points]


def run(command: list[str], log: Path, data: Path) -> str:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENTRAIN_DATA": str(data), "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"parity: {' '.join(command)} failed (exit {done.returncode}); see {log}")
    return done.stdout


def spread(values: list[float]) -> tuple[float, float, float]:
    return sum(values) / len(values), min(values), max(values)


def compare(name: str, family: Family, curves: dict[str, list[list[dict]]]) -> list[list[str]]:
    """One table row per evaluation point: images seen, both sides' mean [min, max], the verdict."""
    rows = []
    steps = sorted({p["step"] for runs in curves.values() for points in runs for p in points})
    for step in steps:
        sides = {side: [next(p["value"] for p in points if p["step"] == step) for points in runs
                        if any(p["step"] == step for p in points)] for side, runs in curves.items()}
        if not all(sides.values()):
            continue
        ours, plain = spread(sides["gentrain"]), spread(sides["plain"])
        verdict = "within or better" if ours[0] <= plain[2] else f"behind by {ours[0] - plain[2]:.3g}"
        rows.append([name, family.metric, f"{step * batch_size(family):,}", f"{ours[0]:.4g} [{ours[1]:.4g}, "
                     f"{ours[2]:.4g}]", f"{plain[0]:.4g} [{plain[1]:.4g}, {plain[2]:.4g}]", verdict])
    return rows


def batch_size(family: Family) -> int:
    from gentrain.composition import compose, to_config

    return to_config(compose(list(family.overrides))).trainer.batch_size


def figure(results: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    columns = 3
    rows = (len(names) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for axis, name in zip(axes.flat, names):
        family, curves = FAMILIES[name], results[name]
        for side, colour in (("plain", "tab:grey"), ("gentrain", "tab:blue")):
            steps = sorted({p["step"] for points in curves[side] for p in points})
            values = [[p["value"] for points in curves[side] for p in points if p["step"] == s] for s in steps]
            images = [s * batch_size(family) for s in steps]
            axis.plot(images, [sum(v) / len(v) for v in values], marker=".", color=colour,
                      label=f"{side} ({len(curves[side])} seeds)")
            axis.fill_between(images, [min(v) for v in values], [max(v) for v in values], color=colour, alpha=0.2)
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("training images seen", fontsize=8)
        axis.set_ylabel(f"validation {family.metric}", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(names):]:
        axis.set_visible(False)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "parity.png"
    fig.savefig(path, dpi=100)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for the runs (reused when run again)")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("GENTRAIN_DATA", "../shared/datasets")))
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one torch thread each")
    parser.add_argument("--out", type=Path, help="folder for parity.md and parity.png")
    parser.add_argument("--report-only", action="store_true", help="only read runs already in --work")
    args = parser.parse_args()
    data = args.data.absolute()

    tasks = {}
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for name in args.families:
            family, folder = FAMILIES[name], args.work / name
            for seed in args.seeds:
                finished = (folder / f"gentrain_seed{seed}" / "metrics.json").is_file() \
                    and (folder / f"plain_seed{seed}.json").is_file()
                if args.report_only and not finished:
                    continue
                tasks[(name, "gentrain", seed)] = pool.submit(gentrain_run, family, seed,
                                                              folder / f"gentrain_seed{seed}", data)
                tasks[(name, "plain", seed)] = pool.submit(plain_run, family, seed, folder / f"plain_seed{seed}.json",
                                                           data)
        results: dict = {}
        for (name, side, seed), task in tasks.items():
            results.setdefault(name, {"gentrain": [], "plain": []})[side].append(task.result())
    header = ["family", "metric", "images seen", "gentrain mean [min, max]", "plain mean [min, max]", "gentrain"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, curves in results.items():
        lines += ["| " + " | ".join(row) + " |" for row in compare(name, FAMILIES[name], curves)]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "parity.md").write_text(table)
        print(figure(results, args.out))


if __name__ == "__main__":
    main()
