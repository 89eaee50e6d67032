"""Training from memory against training from disk (dataset.in_memory=true / false): speed and resident memory.

1. Throughput: the same gentrain run (scripts/benchmark.py's timing: windows of steps between logging points, the
   first window warm-up) with the data in memory and streamed from disk, in alternating fresh processes, on MNIST
   and on the CelebA subset at 64x64. Reports images/s of each and their ratio (goal: streaming >= 0.9).
2. Memory as the data grows: synthetic folders of --sizes images at 64x64 (written once under --work, decoded
   into the cache by a separate process first), then a short streaming run and an in-memory run on each; reports
   the peak resident memory of each training process (os.wait4). Streaming should stay flat as the folder grows.

    python scripts/bench_streaming.py --data ../shared/datasets --work /tmp/gentrain-stream --output stream.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import Case, run, run_gentrain  # noqa: E402

CASES = {
    "vae_mnist": Case(["model=vae", "dataset=mnist"], 128, 40),
    "dcgan_celeba64": Case(["model=dcgan", "dataset=celeba", "dataset.image_size=64"], 64, 5),
}


def write_folder(folder: Path, count: int, side: int = 64) -> Path:
    """`count` random-texture PNGs (count/1000 sub-folders of 1000, no classes), once."""
    marker = folder / ".complete"
    if marker.exists():
        return folder
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for i in range(count):
        sub = folder / f"part{i // 1000:04d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # blocky colour patches: compress like photos do
        image = np.kron(base, np.ones((side // 8, side // 8, 1), dtype=np.uint8))
        Image.fromarray(image).save(sub / f"{i:07d}.png", compress_level=1)
    marker.touch()
    print(f"wrote {count} images in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return folder


def peak_training_mb(folder: Path, in_memory: str, steps: int = 40) -> float:
    """Peak resident MB of a short DCGAN run on the folder (its decoded cache already exists)."""
    run_dir = folder.parent / f"run-{folder.name}-{in_memory}"
    args = [sys.executable, "-m", "gentrain", "model=dcgan", "dataset=folder", f"dataset.path={folder}",
            "dataset.image_size=64", f"dataset.in_memory={in_memory}", f"trainer.max_steps={steps}",
            "trainer.max_epochs=null", "trainer.eval_every=0", "trainer.batch_size=64", "trainer.eval_limit=64",
            "trainer.num_samples=1", "metrics.fid.enabled=false", "trainer.progress_bar=false",
            f"hydra.run.dir={run_dir}"]
    shutil.rmtree(run_dir, ignore_errors=True)  # this script's own run from an earlier invocation with --work
    _, peak = run(args)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset root (e.g. ../shared/datasets)")
    parser.add_argument("--work", type=Path, required=True, help="where the synthetic folders and runs go")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--windows", type=int, default=4, help="logging windows per run; the first is warm-up")
    parser.add_argument("--sizes", type=int, nargs="*", default=[20_000, 100_000])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    lines = ["| case | batch | in memory img/s | streamed img/s | streamed / in memory | in memory peak MB | "
             "streamed peak MB |", "|---|---|---|---|---|---|---|"]
    for name in args.cases:
        case = CASES[name]
        results = {"true": [], "false": []}
        for repeat in range(args.repeats):
            for mode in results:
                result = run_gentrain(case, args.data.absolute(), args.windows, [f"dataset.in_memory={mode}"])
                results[mode].append(result)
                print(f"{name} in_memory={mode} run {repeat + 1}: {[round(w, 1) for w in result['windows']]} img/s, "
                      f"peak {result['peak_mb']:.0f} MB", file=sys.stderr, flush=True)
        speed = {m: statistics.median(w for r in rs for w in r["windows"]) for m, rs in results.items()}
        peak = {m: statistics.median(r["peak_mb"] for r in rs) for m, rs in results.items()}
        lines.append(f"| {name} | {case.batch_size} | {speed['true']:.1f} | {speed['false']:.1f} | "
                     f"{speed['false'] / speed['true']:.2f} | {peak['true']:.0f} | {peak['false']:.0f} |")
    if args.sizes:
        lines += ["", "| synthetic folder, 64x64 RGB | decoded array MB | streamed peak MB | in memory peak MB |",
                  "|---|---|---|---|"]
    env = {**os.environ, "XDG_CACHE_HOME": str(args.work / "cache")}
    os.environ.update(env)
    for size in args.sizes:
        folder = write_folder(args.work / f"folder{size}", size)
        # Decode into the cache once, in a process of its own, so the measured runs only read it.
        subprocess.run([sys.executable, "-c", "import sys; from gentrain.composition import load_dataset; "
                        "from gentrain.data.schemas import FolderConfig; "
                        "load_dataset(FolderConfig(path=sys.argv[1], image_size=64, in_memory='false'))", str(folder)],
                       check=True)
        peaks = {mode: peak_training_mb(folder, mode) for mode in ("false", "true")}
        print(f"{size} images: peak MB {peaks}", file=sys.stderr, flush=True)
        lines.append(f"| {size:,} images | {size * 3 * 64 * 64 / 2**20:.0f} | "
                     f"{peaks['false']:.0f} | {peaks['true']:.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.output:
        args.output.write_text(table + "\n")


if __name__ == "__main__":
    main()
