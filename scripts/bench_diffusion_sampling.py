"""Sampling speed of the diffusion and flow models: images per second against the number of sampling steps.

Each model's default config (or --overrides), untrained weights (the speed does not depend on them), drawing
--batch images with each sampler at each number of steps S:

  ddpm ancestral / ddim   S steps of the respaced chain: S network calls per image
  vdm ancestral           S steps on a uniform grid of t: S network calls
  flow_matching euler     S steps: S velocity calls; heun: S steps, 2 S calls (NFE)
  flow_matching adaptive  Dormand-Prince 5(4) at the model's tolerances (S does not apply; its NFE is measured,
                          and depends on the weights: an untrained field is smooth and cheap)

Each cell is the median of --repeats timed draws after one untimed draw.

    OMP_NUM_THREADS=1 python scripts/bench_diffusion_sampling.py                       # MNIST, 10/35/100 steps
    python scripts/bench_diffusion_sampling.py --shapes cifar10 --steps 10 100 --batch 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gentrain.composition import build_model, compose, to_config
from gentrain.data.schemas import DataInfo

SHAPES = {"mnist": DataInfo(1, 28, 28, 256, 10), "cifar10": DataInfo(3, 32, 32, 256, 10)}
# (name, the model's overrides, the override that sets S, network calls per image for S steps)
SAMPLERS = [
    ("ddpm ancestral", ["model=ddpm", "model.sampler=ancestral"], "model.sampling_steps", 1),
    ("ddpm ddim", ["model=ddpm", "model.sampler=ddim"], "model.sampling_steps", 1),
    ("vdm ancestral", ["model=vdm"], "model.sampling_steps", 1),
    ("flow_matching euler", ["model=flow_matching", "model.solver=euler"], "model.steps", 1),
    ("flow_matching heun", ["model=flow_matching", "model.solver=heun"], "model.steps", 2),
    ("flow_matching adaptive", ["model=flow_matching", "model.solver=adaptive"], None, None),
]


def images_per_second(model, batch: int, repeats: int, device: torch.device) -> float:
    def draw() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model.sample(batch, generator=torch.Generator(device=device).manual_seed(0))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    draw()  # warm-up: first allocations, cuDNN autotuning
    return batch / statistics.median(draw() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="*", default=["mnist"], choices=list(SHAPES))
    parser.add_argument("--steps", nargs="*", type=int, default=[10, 35, 100])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samplers", nargs="*", default=[s[0] for s in SAMPLERS],
                        choices=[s[0] for s in SAMPLERS])
    parser.add_argument("--overrides", nargs="*", default=[], help="config overrides for every model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    print(f"Device {device}, torch threads {torch.get_num_threads()}; images/s drawing {args.batch} images "
          f"(median of {args.repeats} draws), default model configs"
          f"{' + ' + ' '.join(args.overrides) if args.overrides else ''}, untrained weights.\n")
    print("| sampler | shape | steps | NFE per image | images/s |")
    print("|---|---|---|---|---|")
    for name, overrides, steps_key, calls in SAMPLERS:
        if name not in args.samplers:
            continue
        for shape in args.shapes:
            for steps in args.steps if steps_key else [None]:
                torch.manual_seed(0)
                chosen = [f"{steps_key}={steps}"] if steps_key else []
                config = to_config(compose([*overrides, *chosen, *args.overrides]))
                model = build_model(config.model, SHAPES[shape]).to(device).eval()
                rate = images_per_second(model, args.batch, args.repeats, device)
                nfe = steps * calls if steps_key else getattr(model, "last_sampling_nfe", None)
                print(f"| {name} | {shape} | {steps if steps else 'adaptive'} | "
                      f"{nfe:.0f} | {rate:.2f} |", flush=True)


if __name__ == "__main__":
    main()
