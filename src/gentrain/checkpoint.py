"""Checkpoints: written atomically, loaded without running code, checked against the model they claim to be.

Layout of `<run>/checkpoints/`: `step_00001000.pt` for the last `keep` evaluations and `best.pt` for the best
validation score. A save goes to a temporary file that is flushed, synced and renamed over the target, so a
crash or a full disk mid-save leaves the previous checkpoints intact.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any, Optional

import torch

from gentrain.errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT = "gentrain-checkpoint-v1"
STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def atomic_save(state: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise CheckpointError(
                f"could not write checkpoint {path} ({err.strerror or err}); earlier checkpoints are intact"
            ) from err
        raise


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """torch.load with weights_only=True: tensors and plain containers only, never arbitrary objects."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint {path} does not exist") from err
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: {first_line}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a gentrain checkpoint")
    return state


def check_identity(
    state: dict[str, Any], expected: dict[str, Any], path: Path, mutable: frozenset[str] = frozenset()
) -> None:
    """Refuse a checkpoint of another model, model config or data shape, saying which, before loading weights.

    `expected` holds "model" (the registry name), "model_config" (a plain dict) and, when known, "data".
    Optimizer settings and the `mutable` keys (the model's mutable_settings) may differ: a run may continue
    with another learning rate, or be evaluated with more importance samples.
    """
    saved = state.get("identity", {})
    if saved.get("model") != expected["model"]:
        raise CheckpointError(f"{path} is a checkpoint of model '{saved.get('model')}', but this run trains '{expected['model']}'")
    if "data" in expected and saved.get("data") != expected["data"]:
        raise CheckpointError(f"{path} was trained on data of shape {saved.get('data')}, this run has {expected['data']}")
    saved_cfg, our_cfg = saved.get("model_config", {}), expected["model_config"]
    differing = [k for k in sorted(set(saved_cfg) | set(our_cfg))
                 if saved_cfg.get(k) != our_cfg.get(k) and not k.startswith("optim") and k not in mutable]
    if differing:
        details = ", ".join(f"model.{k}: {saved_cfg.get(k)!r} there, {our_cfg.get(k)!r} here" for k in differing)
        raise CheckpointError(f"{path} was trained with another model config ({details})")


class CheckpointManager:
    def __init__(self, directory: Path, keep: int):
        self.directory = directory
        self.keep = keep

    def step_files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := STEP_FILE.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Optional[Path]:
        files = self.step_files()
        return files[-1] if files else None

    def save(self, state: dict[str, Any], step: int, *, best: bool) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"step_{step:08d}.pt"
        atomic_save({"format": FORMAT, **state}, path)
        if best:
            self._mark_best(path)
        for old in self.step_files()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def _mark_best(self, path: Path) -> None:
        """best.pt becomes a hard link to `path` (a copy where links are not supported), swapped in atomically."""
        best = self.directory / "best.pt"
        tmp = best.with_name(f".best.pt.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)
        except OSError:
            atomic_save(load_checkpoint(path), tmp)
        os.replace(tmp, best)
