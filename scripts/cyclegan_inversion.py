"""The known-answer check of CycleGAN: on dataset=unpaired's default pair (A = the first half of MNIST, B = the
second half inverted, 255 - x) the right translation is known, G(a) = 255 - a and F(b) = 255 - b. This measures
how close a trained run comes, on the test images of each domain, as the mean absolute error per pixel of
images in [0, 1]; beside it the same error of doing nothing (the image itself, about twice the mean ink on
MNIST) and of the exact inversion (0). A broken cycle, or a pairing of A and B by position, would not find it.

    python scripts/cyclegan_inversion.py outputs/<date>/<time>       # the run's best checkpoint
    python scripts/cyclegan_inversion.py <run> --checkpoint last
"""

from __future__ import annotations

import argparse

import torch

import gentrain
from gentrain.composition import load_dataset
from gentrain.data.batches import eval_batches
from gentrain.data.schemas import UnpairedConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--checkpoint", default="best")
    args = parser.parse_args()

    run = gentrain.load_run(args.run, checkpoint=args.checkpoint)
    cfg = run.config.dataset
    if not isinstance(cfg, UnpairedConfig) or cfg.a.invert == cfg.b.invert or cfg.a.source is not cfg.b.source:
        raise SystemExit("this check needs dataset=unpaired with one side the inversion of the other (the default)")
    test = load_dataset(cfg).test
    errors = {"a2b": [], "b2a": [], "identity": []}
    with torch.no_grad():
        for batch in eval_batches(test, 250, use_labels=False):
            for direction, images in (("a2b", batch.x), ("b2a", batch.other)):
                truth = (255 - images).float() / 255
                errors[direction].append((run.model.translate(images.to(run.model.device), direction).cpu()
                                          - truth).abs().flatten(1).mean(1))
                errors["identity"].append((images.float() / 255 - truth).abs().flatten(1).mean(1))
    means = {name: torch.cat(values).mean().item() for name, values in errors.items()}
    print(f"run {args.run} (step {run.step}), {len(test)} test images per domain; mean |error| per pixel in [0, 1]:")
    print(f"| G(a) against 255 - a | F(b) against 255 - b | the untranslated image | exact inversion |")
    print(f"|---|---|---|---|")
    print(f"| {means['a2b']:.4f} | {means['b2a']:.4f} | {means['identity']:.4f} | 0 |")


if __name__ == "__main__":
    main()
