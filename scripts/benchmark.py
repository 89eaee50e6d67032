"""Training throughput of gentrain against a plain single-file PyTorch loop of the same network and batch size.

For each case (a model's config on MNIST or CIFAR-10 shapes), `gentrain` and scripts/plain/loop.py, which trains
the same network with the same losses and optimizer settings through a standard DataLoader, each run
--repeats times in fresh processes, alternating. Each run trains --windows windows of the case's number of
steps; the first window is warm-up (first allocations, cuDNN autotuning, compilation) and is not timed.

  img/s    images per second of training: the median over the timed windows of all repeats, where a window's
           time is the wall-clock time between two logging points (everything the loop does counts)
  compiled the same gentrain run with trainer.compile=true (--compile); compilation happens in the warm-up window
  peak MB  peak GPU memory allocated by tensors on CUDA, peak resident memory of the process on CPU

    python scripts/benchmark.py --data ../shared/datasets --output bench.md
    python scripts/benchmark.py --data ../shared/datasets --compile   # also gentrain with trainer.compile=true
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


@dataclass
class Case:
    overrides: list[str]  # gentrain config overrides naming the model and dataset (the plain loop gets the same)
    batch_size: int
    window: int  # steps per timing window


# Each model's default config on MNIST (28x28x1) and CIFAR-10 (32x32x3) shapes, plus the paper's MLP VAE.
CASES = {
    "vae_mlp_binarized_mnist": Case(["experiment=vae_binarized_mnist"], 128, 50),
    **{f"{model}_{data}": Case([*overrides, f"dataset={data}"], batch, window)
       for model, overrides, batch, window in [
           ("vae", ["model=vae"], 128, 20),
           ("pixelcnn", ["model=pixelcnn"], 64, 4),
           ("gated_pixelcnn", ["model=gated_pixelcnn"], 64, 3),
           ("realnvp", ["model=realnvp"], 64, 3),
           ("dcgan", ["model=dcgan"], 64, 10),
           ("wgan_gp", ["model=wgan", "model.lipschitz=gp"], 64, 10),
       ]
       for data in ("mnist", "cifar10")},
}


def run(args: list[str]) -> str:
    """Run a training process; on failure, show its output and stop."""
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(args)}\nfailed with status {result.returncode}:\n{result.stdout}{result.stderr}")
    return result.stdout


def window_throughputs(run_dir: Path, case: Case) -> tuple[list[float], float]:
    """Images/s of each logging window, from the wall-clock times TensorBoard recorded at the logging steps
    (so everything the loop does in between counts), and the last peak memory figure."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    times = [e.wall_time for e in events.Scalars("perf/images_per_sec")]
    windows = [case.window * case.batch_size / (b - a) for a, b in zip(times, times[1:])]
    return windows, events.Scalars("perf/max_memory_mb")[-1].value


def run_gentrain(case: Case, data: Path, windows: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        # No evaluation until the end, and a small one then: only training is timed.
        args = [sys.executable, "-m", "gentrain", *case.overrides, f"dataset.root={data}",
                f"trainer.max_steps={case.window * windows}", "trainer.max_epochs=null", "trainer.eval_every=0",
                f"trainer.log_every={case.window}", f"trainer.batch_size={case.batch_size}",
                f"trainer.eval_limit={case.batch_size}", "trainer.num_samples=1", "metrics.fid.enabled=false",
                "trainer.progress_bar=false", f"hydra.run.dir={run_dir}", *extra]
        run(args)
        # The first logging point closes the warm-up window, which is not timed.
        timed, peak = window_throughputs(run_dir, case)
    return {"windows": timed, "peak_mb": peak}


def run_plain(case: Case, data: Path, windows: int, extra: list[str]) -> dict:
    args = [sys.executable, str(HERE / "plain" / "loop.py"), "--data", str(data), "--batch-size", str(case.batch_size),
            "--steps", str(case.window * windows), "--window", str(case.window), "--", *case.overrides]
    out = run(args)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    timed = [line["window_images_per_sec"] for line in lines[1:-1]]  # the first window is warm-up
    return {"windows": timed, "peak_mb": lines[-1]["peak_memory_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset root (e.g. ../shared/datasets)")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes per trainer and case, alternating")
    parser.add_argument("--windows", type=int, default=4, help="logging windows per run; the first is warm-up")
    parser.add_argument("--gentrain-args", nargs="*", default=[], help="extra overrides for gentrain's runs only, "
                        "e.g. trainer.precision=bf16 trainer.compile=true")
    parser.add_argument("--compile", action="store_true", help="also time gentrain with trainer.compile=true")
    parser.add_argument("--output", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    if args.windows < 2:
        parser.error("--windows must be at least 2: the first window is warm-up")

    rows = []
    for name in args.cases:
        case = CASES[name]
        variants = [("gentrain", run_gentrain, args.gentrain_args), ("plain", run_plain, [])]
        if args.compile:
            variants.append(("compiled", run_gentrain, [*args.gentrain_args, "trainer.compile=true"]))
        results: dict[str, list[dict]] = {label: [] for label, _, _ in variants}
        for repeat in range(args.repeats):
            for label, runner, extra in variants:
                result = runner(case, args.data.absolute(), args.windows, extra)
                results[label].append(result)
                print(f"{name} {label} run {repeat + 1}: windows {[round(w, 1) for w in result['windows']]} img/s, peak {result['peak_mb']:.0f} MB",
                      file=sys.stderr, flush=True)
        m = {label: {"img_s": statistics.median(w for r in runs for w in r["windows"]),
                     "peak_mb": statistics.median(r["peak_mb"] for r in runs)} for label, runs in results.items()}
        ours, plain = m["gentrain"], m["plain"]
        cells = [name, str(case.batch_size), f"{ours['img_s']:.1f}", f"{plain['img_s']:.1f}",
                 f"{ours['img_s'] / plain['img_s']:.2f}"]
        if args.compile:
            cells += [f"{m['compiled']['img_s']:.1f}", f"{m['compiled']['img_s'] / plain['img_s']:.2f}"]
        cells += [f"{ours['peak_mb']:.0f}", f"{plain['peak_mb']:.0f}"]
        rows.append("| " + " | ".join(cells) + " |")

    if torch.cuda.is_available():
        device, memory = torch.cuda.get_device_name(), "peak GPU memory allocated by tensors"
    else:
        device = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        memory = "peak resident memory of the process"
    extra = f"; gentrain runs with {' '.join(args.gentrain_args)}" if args.gentrain_args else ""
    header = [
        f"Device: {device}; torch {torch.__version__}{extra}. img/s: median over the timed windows of "
        f"{args.repeats} fresh processes per trainer ({args.windows - 1} windows each after a warm-up window); "
        f"peak MB: {memory}.",
        "",
        "| case | batch | gentrain img/s | plain loop img/s | gentrain / plain | "
        + ("compiled img/s | compiled / plain | " if args.compile else "") + "gentrain peak MB | plain peak MB |",
        "|---" * (9 if args.compile else 7) + "|",
    ]
    footer = ["", "Configs: " + "; ".join(f"{name}: `{' '.join(CASES[name].overrides)}`" for name in args.cases)]
    table = "\n".join(header + rows + footer) + "\n"
    print(table)
    if args.output:
        args.output.write_text(table)


if __name__ == "__main__":
    main()
