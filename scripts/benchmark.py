"""Training throughput of gentrain against plain single-file PyTorch loops of the same networks.

For each case, `gentrain` and the matching plain loop (scripts/plain/) train one epoch on the same data in
fresh processes, alternating, --repeats times. Reported (medians over the repeats):

  epoch s      training time of the epoch: batching and optimizer steps, no evaluation or start-up
  img/s        images of the epoch / epoch s
  window img/s median of the timed windows (50 steps each) after the first, which is warm-up
  peak MB      peak resident memory of the process (CPU) as the run reports it
  wall s       the whole process: imports, data loading, the epoch and (gentrain) the final evaluation

    python scripts/benchmark.py --data ../shared/datasets --repeats 3 --output bench.md
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


@dataclass
class Case:
    description: str
    gentrain_args: list[str]
    plain_script: str
    batch_size: int


CASES = {
    "vae_mlp_mnist": Case(
        "MLP VAE 784-400-20, Bernoulli, dynamically binarized MNIST, Adam 1e-3, batch 128",
        ["experiment=vae_binarized_mnist", "model.iw_samples=0"],
        "vae_mlp.py",
        128,
    ),
}


def median_after_warmup(values: list[float]) -> float:
    return statistics.median(values[1:] if len(values) > 1 else values)


def run_gentrain(case: Case, data: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        args = [sys.executable, "-m", "gentrain", *case.gentrain_args, f"dataset.root={data}",
                "trainer.max_epochs=1", "trainer.max_steps=null", "trainer.eval_every=0", "trainer.log_every=50",
                f"trainer.batch_size={case.batch_size}", "trainer.progress_bar=false", f"hydra.run.dir={run_dir}"]
        start = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - start
        metrics = json.loads((run_dir / "metrics.json").read_text())
        events = EventAccumulator(str(run_dir))
        events.Reload()
        windows = [e.value for e in events.Scalars("perf/images_per_sec")]
        memory = events.Scalars("perf/max_memory_mb")[-1].value
    images = metrics["step"] * case.batch_size
    return {"epoch_s": metrics["train_seconds"], "img_s": images / metrics["train_seconds"],
            "window_img_s": median_after_warmup(windows), "peak_mb": memory, "wall_s": wall}


def run_plain(case: Case, data: Path) -> dict:
    args = [sys.executable, str(HERE / "plain" / case.plain_script), "--data", str(data),
            "--batch-size", str(case.batch_size)]
    start = time.perf_counter()
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - start
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    summary = lines[-1]
    windows = [line["window_images_per_sec"] for line in lines[:-1]]
    return {"epoch_s": summary["train_seconds"], "img_s": summary["images"] / summary["train_seconds"],
            "window_img_s": median_after_warmup(windows), "peak_mb": summary["peak_rss_mb"], "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset root (e.g. ../shared/datasets)")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, help="also write the markdown table here")
    args = parser.parse_args()

    rows = []
    for name in args.cases:
        case = CASES[name]
        results: dict[str, list[dict]] = {"gentrain": [], "plain loop": []}
        for repeat in range(args.repeats):
            for label, runner in (("gentrain", run_gentrain), ("plain loop", run_plain)):
                result = runner(case, args.data.absolute())
                results[label].append(result)
                print(f"{name} {label} run {repeat + 1}: {json.dumps({k: round(v, 1) for k, v in result.items()})}",
                      file=sys.stderr, flush=True)
        medians = {label: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for label, runs in results.items()}
        ratio = medians["gentrain"]["img_s"] / medians["plain loop"]["img_s"]
        for label, m in medians.items():
            rows.append(f"| {name} | {label} | {m['epoch_s']:.1f} | {m['img_s']:.0f} | {m['window_img_s']:.0f} | "
                        f"{m['peak_mb']:.0f} | {m['wall_s']:.1f} | {ratio if label == 'gentrain' else 1.0:.2f} |")

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    header = [
        f"Device: {device}; torch {torch.__version__}; medians of {args.repeats} runs each, one epoch.",
        "",
        "| case | trainer | epoch s | img/s | window img/s | peak MB | wall s | speed vs plain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    descriptions = [f"- {name}: {CASES[name].description}" for name in args.cases]
    table = "\n".join(header + rows + [""] + descriptions) + "\n"
    print(table)
    if args.output:
        args.output.write_text(table)


if __name__ == "__main__":
    main()
