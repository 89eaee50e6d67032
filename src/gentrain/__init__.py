"""gentrain: a config-driven training CLI for image generative models, and its Python API (gentrain/api.py):

    import gentrain
    run = gentrain.load_run("outputs/2026-12-01/14-02-11")
    images = run.sample(16)

The API's names are imported on first use, so that `import gentrain` (and the command's start-up) stays light.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Run", "build_model", "load_run", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from gentrain import api

        return getattr(api, name)
    raise AttributeError(f"module 'gentrain' has no attribute {name!r}")
