"""The options of every built-in model, one module per family: dataclasses that Hydra validates configs against.

They import nothing but gentrain's config helpers, so that composing a config (`gentrain --help`, `--cfg job`, a
misspelt key) never imports torch. Each config class names its model (@model_config in gentrain/registry.py);
the model itself, in gentrain/models/, attaches to it with `class VAE(GenerativeModel, config=VAEConfig)`.
"""

from __future__ import annotations

from typing import Iterator


def guidance_problems(conditional: bool, guidance_scale: float, prefix: str, predicts: str) -> Iterator[str]:
    """What is wrong with a classifier-free guidance setting (diffusion and flow matching models)."""
    if guidance_scale != 1.0 and not conditional:
        yield (f"{prefix}guidance_scale={guidance_scale} needs {prefix}conditional=true (classifier-free "
               f"guidance mixes the class-conditional and the unconditional {predicts})")
