"""CPU seconds of what a user waits for: start-up (`gentrain --help`, `--cfg job`, tab completion, config errors)
and a `trainer=debug` run of every model on MNIST.

CPU time (user + system of the command and every process it waited for) rather than wall time, so that a busy
machine changes the figures little. Debug runs start with an empty cache directory (no FID classifier or
reference statistics yet): the cost a user meets the first time.

    python scripts/bench_cpu_seconds.py --data ../shared/datasets            # both tables
    python scripts/bench_cpu_seconds.py --startup-only --repeats 5
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STARTUP = {
    "gentrain --help": ["--help"],
    "gentrain --cfg job": ["--cfg", "job"],
    "gentrain model=dcgan dataset=cifar10 --cfg job": ["model=dcgan", "dataset=cifar10", "--cfg", "job"],
    "tab completion (gentrain model=)": ["-sc", "query=bash"],
    "a misspelt key (trainer.max_stpes=1)": ["trainer.max_stpes=1", "hydra.run.dir={run}"],
    "a bad value (trainer.batch_size=0)": ["trainer.batch_size=0", "hydra.run.dir={run}"],
    "gentrain --version": ["--version"],
}
MODELS = ["vae", "pixelcnn", "gated_pixelcnn", "realnvp", "dcgan", "wgan"]


def cpu_seconds(arguments: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, exit status) of `python -m gentrain <arguments>`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "gentrain", *arguments], env=env, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, result.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("GENTRAIN_DATA", "../shared/datasets")))
    parser.add_argument("--repeats", type=int, default=3, help="runs of each start-up command (the median is shown)")
    parser.add_argument("--startup-only", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gentrain-bench-"))
    env = {**os.environ, "GENTRAIN_DATA": str(args.data.absolute()), "XDG_CACHE_HOME": str(work / "cache"),
           "COMP_LINE": "gentrain model=", "COMP_POINT": "15"}

    print("| command | CPU s (median) | wall s | exit status |")
    print("|---|---|---|---|")
    for label, arguments in STARTUP.items():
        arguments = [a.format(run=work / "run") for a in arguments]
        runs = [cpu_seconds(arguments, env, work) for _ in range(args.repeats)]
        cpu = statistics.median(r[0] for r in runs)
        print(f"| `{label}` | {cpu:.2f} | {statistics.median(r[1] for r in runs):.2f} | {runs[0][2]} |")
    if args.startup_only:
        return

    print()
    print("| trainer=debug on MNIST | CPU s | wall s | exit status |")
    print("|---|---|---|---|")
    for model in MODELS:
        cpu, wall, status = cpu_seconds([f"model={model}", "trainer=debug", f"hydra.run.dir={work / model}"], env, work)
        print(f"| `gentrain model={model} trainer=debug` | {cpu:.1f} | {wall:.1f} | {status} |")


if __name__ == "__main__":
    main()
