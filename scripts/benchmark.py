"""gentrain against a plain single-file PyTorch loop of the same network and batch size: speed, start-up, memory.

For each case (a model's config on MNIST 28x28, MNIST resized to 64x64, or CIFAR-10 shapes), `gentrain` and
scripts/plain/loop.py, which trains the same network with the same losses and optimizer settings through a
standard DataLoader (resizing each image there when the case resizes), each run --repeats times in fresh
processes, alternating. Each run trains --windows windows of the case's number of steps; the first window is
warm-up (first allocations, cuDNN autotuning, compilation) and is not timed.

  img/s        images per second of training: the median over the timed windows of all repeats, where a window's
               time is the wall-clock time between two logging points (everything the loop does counts)
  first step   seconds from the process's start to the end of its first training step (imports, data, model)
  peak MB      peak resident memory of the whole process (os.wait4), the final evaluation included; on CUDA also
               the peak GPU memory allocated by tensors
  compiled     the same gentrain run with trainer.compile=true (--compile); compilation happens in the warm-up window

--iw adds the VAE's end-of-run bound: seconds per 1,000 test images of the k=100 importance-weighted pass, with
gentrain's settings, with the earlier ones (4,096 latents per decoder call, default memory format, activations
that allocate their output), its decoder network alone on as many latents (the floor of any fp32 pass with these
layers) and under bf16 autocast, in turns.

    python scripts/benchmark.py --data ../shared/datasets --output bench.md
    python scripts/benchmark.py --data ../shared/datasets --cases vae_mnist64 dcgan_mnist64 --iw
"""

from __future__ import annotations

import argparse
import json
import os
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
SHAPES = {"mnist": ["dataset=mnist"], "mnist64": ["dataset=mnist", "dataset.image_size=64"],
          "cifar10": ["dataset=cifar10"]}


@dataclass
class Case:
    overrides: list[str]  # gentrain config overrides naming the model and dataset (the plain loop gets the same)
    batch_size: int
    window: int  # steps per timing window


# Each model's default config at each shape, plus the paper's MLP VAE. PixelRNN's step takes seconds on a CPU:
# batch 32, and no 64x64 case; nor for the models added since (U-Nets, attention over pixels, PixelCNN++).
ALL_SHAPES = tuple(SHAPES)
CASES = {
    "vae_mlp_binarized_mnist": Case(["experiment=vae_binarized_mnist"], 128, 50),
    **{f"{model}_{shape}": Case([*overrides, *SHAPES[shape]], batch,
                                window if shape != "mnist64" else max(2, window // 4))
       for model, overrides, batch, window, shapes in [
           ("vae", ["model=vae"], 128, 20, ALL_SHAPES),
           ("pixelcnn", ["model=pixelcnn"], 64, 4, ALL_SHAPES),
           ("gated_pixelcnn", ["model=gated_pixelcnn"], 64, 3, ALL_SHAPES),
           ("pixelrnn", ["model=pixelrnn"], 32, 2, ("mnist", "cifar10")),
           ("made", ["model=made"], 64, 20, ALL_SHAPES),
           ("realnvp", ["model=realnvp"], 64, 3, ALL_SHAPES),
           ("dcgan", ["model=dcgan"], 64, 10, ALL_SHAPES),
           ("wgan_gp", ["model=wgan", "model.lipschitz=gp"], 64, 10, ALL_SHAPES),
           # the models added since: the U-Net of the diffusion and flow models, the attention and PixelCNN++
           ("ddpm", ["model=ddpm"], 32, 3, ("mnist", "cifar10")),
           ("vdm", ["model=vdm"], 32, 3, ("mnist", "cifar10")),
           ("flow_matching", ["model=flow_matching"], 32, 3, ("mnist", "cifar10")),
           ("pixel_transformer", ["model=pixel_transformer"], 16, 2, ("mnist", "cifar10")),
           ("pixelcnnpp", ["model=pixelcnnpp"], 16, 2, ("mnist", "cifar10")),
       ]
       for shape in shapes},
}


def run(args: list[str]) -> tuple[str, float]:
    """Run a training process -> (its output, its peak resident memory in MB); on failure, show it and stop."""
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if process.returncode:
        raise SystemExit(f"{' '.join(args)}\nfailed with status {process.returncode}:\n{text}")
    return text, usage.ru_maxrss / 1024  # Linux reports KiB


def run_gentrain(case: Case, data: Path, windows: int, extra: list[str]) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        # No evaluation until the end, and a small one then: only training is timed.
        args = [sys.executable, "-m", "gentrain", *case.overrides, f"dataset.root={data}",
                f"trainer.max_steps={case.window * windows}", "trainer.max_epochs=null", "trainer.eval_every=0",
                f"trainer.log_every={case.window}", f"trainer.batch_size={case.batch_size}",
                f"trainer.eval_limit={case.batch_size}", "trainer.num_samples=1", "metrics.fid.enabled=false",
                "trainer.progress_bar=false", f"hydra.run.dir={run_dir}", *extra]
        _, peak = run(args)
        events = EventAccumulator(str(run_dir))
        events.Reload()
        # The first logging point closes the warm-up window, which is not timed.
        times = [e.wall_time for e in events.Scalars("perf/images_per_sec")]
        timed = [case.window * case.batch_size / (b - a) for a, b in zip(times, times[1:])]
        first = events.Scalars("perf/seconds_to_first_step")[0].value
        gpu = events.Scalars("perf/max_memory_mb")[-1].value if torch.cuda.is_available() else None
    return {"windows": timed, "first_step": first, "peak_mb": peak, "gpu_mb": gpu}


def run_plain(case: Case, data: Path, windows: int, extra: list[str]) -> dict:
    args = [sys.executable, str(HERE / "plain" / "loop.py"), "--data", str(data), "--batch-size", str(case.batch_size),
            "--steps", str(case.window * windows), "--window", str(case.window), "--", *case.overrides]
    out, peak = run(args)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    windows_ = [line["window_images_per_sec"] for line in lines if "window_images_per_sec" in line]
    first = next(line["seconds_to_first_step"] for line in lines if "seconds_to_first_step" in line)
    return {"windows": windows_[1:], "first_step": first, "peak_mb": peak, "gpu_mb": lines[-1]["peak_memory_mb"]
            if torch.cuda.is_available() else None}


IW_EARLIER = "earlier (4096 latents per call, NCHW, activations not in place)"
IW_DECODER = "its decoder alone (the same latents, no likelihood)"
IW_BF16 = "gentrain with trainer.precision=bf16"


def iw_seconds_per_1000(data: Path, repeats: int, images: int = 500, k: int = 100) -> dict[str, float]:
    """The default VAE's k=100 bound on `images` test images: gentrain's pass, the earlier settings, the decoder
    network alone on as many latents in calls of `images` (what any fp32 pass must at least cost with these
    layers), and gentrain's pass under bf16 autocast, as a run with trainer.precision=bf16 evaluates."""
    from gentrain.composition import build_model, compose, load_dataset, to_config
    from gentrain.config import Precision
    from gentrain.data.batches import Batch
    from gentrain.runtime import autocast

    os.environ["GENTRAIN_DATA"] = str(data)
    config = to_config(compose(["model=vae"]))
    dataset = load_dataset(config.dataset)
    batch = Batch(dataset.test.images[:images], None)

    def decoder_alone(model) -> None:
        for _ in range(k):
            model.decode(torch.randn(images, model.cfg.latent_dim), None)

    settings = {  # name: (pass, gentrain's layout: NHWC weights and activations in place)
        "gentrain": (lambda model: model.importance_weighted_nll(batch, k), True),
        IW_EARLIER: (lambda model: model.importance_weighted_nll(batch, k, max_decodes=4096), False),
        IW_DECODER: (decoder_alone, True),
        IW_BF16: (lambda model: model.importance_weighted_nll(batch, k), True),
    }
    times: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(repeats):
        for name, (run_pass, current) in settings.items():
            torch.manual_seed(0)
            model = build_model(config.model, dataset.info).eval()
            if current:
                model.to(memory_format=torch.channels_last)
            else:
                for module in model.modules():
                    if isinstance(module, torch.nn.SiLU):
                        module.inplace = False
            precision = Precision.bf16 if name == IW_BF16 else Precision.fp32
            with torch.no_grad(), autocast(precision, torch.device("cpu")):
                started = time.perf_counter()
                run_pass(model)
                times[name].append((time.perf_counter() - started) * 1000 / images)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset root (e.g. ../shared/datasets)")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes per trainer and case, alternating")
    parser.add_argument("--windows", type=int, default=4, help="logging windows per run; the first is warm-up")
    parser.add_argument("--gentrain-args", nargs="*", default=[], help="extra overrides for gentrain's runs only, "
                        "e.g. trainer.precision=bf16 trainer.compile=true")
    parser.add_argument("--compile", action="store_true", help="also time gentrain with trainer.compile=true")
    parser.add_argument("--iw", action="store_true", help="also time the VAE's k=100 end-of-run bound")
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
                print(f"{name} {label} run {repeat + 1}: windows {[round(w, 1) for w in result['windows']]} img/s, "
                      f"first step {result['first_step']:.1f} s, peak {result['peak_mb']:.0f} MB", file=sys.stderr,
                      flush=True)
        m = {label: {key: statistics.median(v for r in runs for v in (r[key] if key == "windows" else [r[key]]))
                     for key in ("windows", "first_step", "peak_mb")} for label, runs in results.items()}
        ours, plain = m["gentrain"], m["plain"]
        cells = [name, str(case.batch_size), f"{ours['windows']:.1f}", f"{plain['windows']:.1f}",
                 f"{ours['windows'] / plain['windows']:.2f}"]
        if args.compile:
            cells += [f"{m['compiled']['windows']:.1f}", f"{m['compiled']['windows'] / plain['windows']:.2f}"]
        cells += [f"{ours['first_step']:.1f}", f"{plain['first_step']:.1f}",
                  f"{ours['first_step'] / plain['first_step']:.2f}",
                  f"{ours['peak_mb']:.0f}", f"{plain['peak_mb']:.0f}", f"{ours['peak_mb'] / plain['peak_mb']:.2f}"]
        rows.append("| " + " | ".join(cells) + " |")

    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        device = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    extra = f"; gentrain runs with {' '.join(args.gentrain_args)}" if args.gentrain_args else ""
    header = [
        f"Device: {device}; torch {torch.__version__}{extra}. img/s: median over the timed windows of "
        f"{args.repeats} fresh processes per trainer ({args.windows - 1} windows each after a warm-up window); "
        f"first step: seconds from process start to the end of the first training step; peak MB: peak resident "
        f"memory of the whole process (medians of the runs).",
        "",
        "| case | batch | gentrain img/s | plain img/s | gentrain / plain | "
        + ("compiled img/s | compiled / plain | " if args.compile else "")
        + "gentrain first step s | plain first step s | ratio | gentrain peak MB | plain peak MB | ratio |",
        "|---" * (14 if args.compile else 12) + "|",
    ]
    footer = ["", "Configs: " + "; ".join(f"{name}: `{' '.join(CASES[name].overrides)}`" for name in args.cases)]
    if args.iw:
        seconds = iw_seconds_per_1000(args.data.absolute(), args.repeats)
        footer += ["", "| VAE end-of-run bound (default conv VAE, MNIST, k=100) | s per 1,000 test images | "
                   "earlier / this |", "|---|---|---|"]
        footer += [f"| {name} | {value:.1f} | {seconds[IW_EARLIER] / value:.1f}x |" for name, value in seconds.items()]
    table = "\n".join(header + rows + footer) + "\n"
    print(table)
    if args.output:
        args.output.write_text(table)


if __name__ == "__main__":
    main()
