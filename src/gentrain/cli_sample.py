"""`gentrain-sample run=<run dir> n=64`: samples from a trained run, as a PNG grid and raw uint8 arrays.

    gentrain-sample run=outputs/2026-11-23/14-02-11 n=64 seed=1
    gentrain-sample run=... labels=[3,3,3,3]                   # conditional models: these classes
    gentrain-sample run=... temperature=0.7                    # flows and VAEs
    gentrain-sample run=... complete=top_half n=16             # PixelCNN family: finish test images
    gentrain-sample run=... interpolate=true n=16              # VAEs: paths between test images
    gentrain-sample run=... checkpoint=last dataset.root=/data # another checkpoint; data for completion
    gentrain-sample run=... out=/tmp/samples                   # a run directory you cannot write to
    gentrain-sample run=... translate=a2b input=horses output=zebras  # CycleGAN: one file per image

The model is rebuilt from the run's saved config and checkpoint (best.pt unless `checkpoint=` names another),
with its EMA weights when the run kept them. Output: <run>/samples/<name>.png and <name>.npz (images as uint8
pixel values in [0, levels), labels, and the settings), or the same files in `out=<folder>`. Existing files
are never replaced unless `overwrite=true`; translations never go into (or around) their input folder, and two
inputs that would share an output name (a.png, a.jpg) are refused before any work.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import MISSING

from gentrain.config import DEVICE_PATTERN, SEED_MAX, setting
from gentrain.composition import load_dataset
from gentrain.data.batches import Batch, eval_batches
from gentrain.errors import ConfigError
from gentrain.evaluation import Evaluator
from gentrain.files import write_file
from gentrain.logger import image_grid, write_png
from gentrain.runs import LoadedRun, load_run, output_dir, refuse_existing, run_command
from gentrain.runtime import pick_device

log = logging.getLogger("gentrain.sample")

class Completion(Enum):
    top_half = "top_half"  # the top half of each test image is given


class Direction(Enum):
    a2b = "a2b"
    b2a = "b2a"


@dataclass
class SampleOptions:
    run: str = MISSING  # the run directory
    n: int = setting(64, min=1, max=4096)  # images to draw
    checkpoint: str = "best"  # best | last | a checkpoint file
    seed: int = setting(0, min=0, max=SEED_MAX)
    labels: Any = None  # conditional models: one class id for every image, or a list of n
    temperature: float = setting(1.0, above=0)  # flows and VAEs
    complete: Optional[Completion] = None  # PixelCNN family
    interpolate: bool = False  # VAEs
    device: str = setting("auto", pattern=DEVICE_PATTERN, meaning="auto, cpu, cuda, cuda:N or mps")
    name: Optional[str] = setting(None, pattern=r"[\w.-]+",
                                  meaning="a file name (letters, digits, '.', '-', '_')")
    out: Optional[str] = None  # the folder for the files; null: <run>/samples
    translate: Optional[Direction] = None  # translation models: a2b or b2a, the images of input= into output=
    # translate: a folder of PNG/JPEG images (sub-folders too)
    input: Optional[str] = setting(None, path="dir")
    # translate: where the translated images go; null: <run>/samples/translated_<dir>
    output: Optional[str] = None
    overwrite: bool = False  # replace existing files of the same names (never done otherwise)


def _labels(run: LoadedRun, value: Any, n: int, device: torch.device) -> Optional[torch.Tensor]:
    if value is None:
        return run.model.default_labels(n)
    if not run.model.conditional:
        raise ConfigError("labels= is for conditional models; this run is not conditional")
    ids = [value] * n if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(ids, list) or len(ids) != n
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
            or min(ids) < 0 or max(ids) >= run.data.num_classes):
        raise ConfigError(f"labels= needs {n} class ids (or one) in [0, {run.data.num_classes}), got {value}")
    return torch.as_tensor(ids, device=device).long()


def _test_images(run: LoadedRun, n: int, device: torch.device) -> Batch:
    """The first n test images (completion and interpolation start from real images)."""
    dataset = load_dataset(run.config.dataset)
    return next(eval_batches(dataset.test, n, use_labels=run.model.conditional, device=device))


def translation_targets(source: Path, out_dir: Path, paths: list[Path]) -> list[Path]:
    """Where each image of `source` goes: a PNG of the same relative name under `out_dir`. Refused before any
    work when the two folders overlap (the translations would replace the images, or be read as inputs by the
    next translation) or when two inputs share an output name (a.png and a.jpg)."""
    if out_dir == source or source in out_dir.parents or out_dir in source.parents:
        raise ConfigError(f"output={out_dir} and input={source} overlap: the translations would replace or "
                          f"mix with the images they come from; choose an output folder outside the input")
    targets = [(out_dir / path.relative_to(source)).with_suffix(".png") for path in paths]
    first: dict[Path, Path] = {}
    for path, target in zip(paths, targets):
        if target in first:
            raise ConfigError(f"{first[target].relative_to(source)} and {path.relative_to(source)} would "
                              f"both be written as {target}: rename one of them")
        first[target] = path
    return targets


def translate(options: SampleOptions, overrides: list[str]) -> tuple[int, Path]:
    """Translate every image under options.input with a translation model (CycleGAN): each is centre-cropped
    and resized to the model's images, and written as a PNG of the same relative name under the output
    folder."""
    from gentrain.data.folder import find_images
    from gentrain.data.images import decode_images
    from gentrain.progress import track

    if options.input is None:
        raise ConfigError("translate= needs input=<a folder of images>")
    device = pick_device(options.device)
    run = load_run(Path(options.run), checkpoint=options.checkpoint, overrides=overrides, device=device)
    if run.model.domains != 2:
        raise ConfigError(f"translate= is for translation models (model=cyclegan); this run trains "
                          f"{run.model.name}")
    source = Path(os.path.abspath(Path(options.input).expanduser()))
    direction = options.translate.value
    paths, _, _ = find_images(source)
    default = run.run_dir / "samples" / f"translated_{direction}"
    chosen = Path(os.path.abspath(Path(options.output).expanduser())) if options.output else default
    targets = translation_targets(source, chosen, paths)  # refused before any folder is made
    refuse_existing(targets, options.overwrite)
    out_dir = output_dir(options.output, default, "output", run_dir=run.run_dir)
    data = run.data
    evaluator = Evaluator(run.model, None, batch_size=1, precision=run.config.trainer.precision,
                          device=device, seed=options.seed, ema=run.ema)
    batch_size = 64
    with evaluator.eval_mode():
        for start in track(range(0, len(paths), batch_size), f"translate {direction}", unit="batch"):
            chunk = paths[start : start + batch_size]
            images = torch.from_numpy(decode_images(chunk, data.height, None, data.channels, desc="decode"))
            translated = run.model.translate(images.to(device), direction).cpu()
            for target, image in zip(targets[start : start + batch_size], translated):
                write_png(target, image, root=out_dir, replace=options.overwrite)
    return len(paths), out_dir


def draw(options: SampleOptions, overrides: list[str]) -> tuple[Path, Path]:
    device = pick_device(options.device)
    run = load_run(Path(options.run), checkpoint=options.checkpoint, overrides=overrides, device=device)
    out_dir = output_dir(options.out, run.run_dir / "samples", run_dir=run.run_dir)
    n, seed = options.n, options.seed
    kind = ("completion" if options.complete is not None
            else "interpolation" if options.interpolate else "samples")
    name = options.name or f"{kind}_step{run.step:08d}_seed{seed}" + (
        f"_t{options.temperature}" if options.temperature != 1.0 else "")
    png, npz = out_dir / f"{name}.png", out_dir / f"{name}.npz"
    refuse_existing([png, npz], options.overwrite)  # before the sampling, which can take minutes
    evaluator = Evaluator(run.model, None, batch_size=n, precision=run.config.trainer.precision,
                          device=device, seed=seed, ema=run.ema)
    generator = torch.Generator(device=device).manual_seed(seed)
    labels = None
    with evaluator.eval_mode():
        if options.complete is not None:
            batch = _test_images(run, n, device)
            completed = run.model.complete(batch, generator)
            originals = batch.x.float() / (run.data.levels - 1)
            images = completed
            grid = torch.stack([originals, completed])  # the test images above, their completions below
            labels = batch.y
        elif options.interpolate:
            batch = _test_images(run, 2 * max(1, n // 10), device)
            grid = run.model.interpolate(batch)
            images = grid.flatten(0, 1)
        else:
            labels = _labels(run, options.labels, n, device)
            images = run.model.sample(n, labels=labels, generator=generator, temperature=options.temperature)
            grid = images

    pixels = (images.float().clamp(0, 1) * (run.data.levels - 1)).round().to(torch.uint8).cpu().numpy()
    arrays = dict(
        images=pixels, labels=np.array([]) if labels is None else labels.cpu().numpy(),
        levels=run.data.levels, checkpoint=str(run.checkpoint.relative_to(run.run_dir)), step=run.step,
        seed=seed, temperature=options.temperature, kind=kind,
    )
    write_png(png, image_grid(grid), root=out_dir, replace=options.overwrite)
    write_file(npz, lambda f: np.savez_compressed(f, **arrays), root=out_dir, replace=options.overwrite)
    return png, npz


def main(argv: Optional[list[str]] = None) -> None:
    def action(options: SampleOptions, overrides: list[str]) -> str:
        if options.translate is not None:
            count, folder = translate(options, overrides)
            return f"translated {count} images into {folder}"
        png, npz = draw(options, overrides)
        return f"wrote {png} and {npz}"

    run_command("gentrain-sample", __doc__, SampleOptions, action, argv)


if __name__ == "__main__":
    main()
