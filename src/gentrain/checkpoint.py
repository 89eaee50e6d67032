"""Checkpoints: written atomically, loaded without running code, checked against the model they claim to be.

Layout of `<run>/checkpoints/`: `step_00001000.pt` for the last `keep` evaluations and `best.pt` for the best
validation score. A save goes to a temporary file that is flushed, synced and renamed over the target, so a
crash or a full disk mid-save leaves the previous checkpoints intact. A checkpoint is *good* when its weights
and its validation metrics are finite: only a good one can be best, and the newest good one is never rotated
away, so a run that goes bad keeps something to return to.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from gentrain import distributed
from gentrain.errors import CheckpointError, storage_error
from gentrain.files import real_folder, write_file
from gentrain.runtime import seed_generators

log = logging.getLogger(__name__)

FORMAT = "gentrain-checkpoint-v1"
STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def atomic_save(state: dict[str, Any], path: Path) -> None:
    """torch.save through files.write_file: synced, renamed into place, never through a link."""
    try:
        write_file(path, lambda f: torch.save(state, f), root=path.parent.parent, sync=True)
    except BaseException as err:
        cause = err if isinstance(err, OSError) else storage_error(err)  # torch wraps it in a RuntimeError
        if cause is not None:
            raise CheckpointError(
                f"could not write checkpoint {path} ({cause.strerror or cause}); earlier checkpoints are "
                f"intact"
            ) from None
        raise


# What every checkpoint holds, and what continuing its training needs besides (name -> type).
CONTENTS = {"identity": dict, "model": dict, "step": int}
TRAINING_STATE = {"optimizers": dict, "schedulers": dict, "scaler": dict, "batches": dict,
                  "best_metric": float, "nonfinite_skipped": int, "train_seconds": float,
                  "wall_minutes": float, "rng": dict}
IDENTITY = {"model": str, "model_config": dict, "data": dict}


def load_checkpoint(path: Path, map_location: Any = "cpu", *, for_training: bool = False) -> dict[str, Any]:
    """torch.load with weights_only=True (tensors and plain containers only, never arbitrary objects), checked
    to hold what gentrain needs from it: a damaged or foreign file is refused in one line, before anything
    uses it."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint {path} does not exist") from err
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError, KeyError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: {first_line}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a gentrain checkpoint")
    wanted = {**CONTENTS, **(TRAINING_STATE if for_training else {})}
    accepted = {k: (int, float) if kind is float else kind for k, kind in wanted.items()}
    bad = [k for k, kind in accepted.items() if not isinstance(state.get(k), kind)]
    identity = state.get("identity") if isinstance(state.get("identity"), dict) else {}
    bad += [f"identity.{k}" for k, kind in IDENTITY.items() if not isinstance(identity.get(k), kind)]
    if bad:
        raise CheckpointError(f"{path} is damaged or incomplete: {', '.join(bad)} missing or of the wrong "
                              f"type")
    return state


def resume_source(source: Optional[str], run_dir: Path) -> Optional[Path]:
    """The checkpoint trainer.resume names: 'auto' = this run's latest (None when it has none yet), a run
    directory = its latest, or a checkpoint file."""
    if not source:
        return None
    if source == "auto":
        return CheckpointManager(run_dir / "checkpoints").latest()
    path = Path(source).expanduser()
    if path.is_dir():
        latest = CheckpointManager(path / "checkpoints").latest()
        if latest is None:
            raise CheckpointError(f"trainer.resume={source}: that run has no checkpoint to continue from")
        return latest
    if not path.is_file():
        raise CheckpointError(f"trainer.resume={source} is neither a run directory nor a checkpoint file")
    return path


def check_identity(state: dict[str, Any], expected: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint of another model, model config or data shape, saying which, before loading weights.

    `expected` is composition.identity(): "model" (the name), "model_config" (a plain dict) and "data".
    Optimizer settings and the keys the model's config class declares `mutable` may differ: a run may continue
    with another learning rate, or be evaluated with more importance samples.
    """
    from gentrain import registry

    mutable = getattr(registry.configs("model").get(expected["model"]), "mutable", frozenset())
    saved = state.get("identity", {})
    if saved.get("model") != expected["model"]:
        raise CheckpointError(f"{path} is a checkpoint of model '{saved.get('model')}', but this run trains "
                              f"'{expected['model']}'")
    if "data" in expected and saved.get("data") != expected["data"]:
        raise CheckpointError(f"{path} was trained on data of shape {saved.get('data')}, this run has "
                              f"{expected['data']}")
    saved_cfg, our_cfg = saved.get("model_config", {}), expected["model_config"]
    differing = [k for k in sorted(set(saved_cfg) | set(our_cfg))
                 if saved_cfg.get(k) != our_cfg.get(k) and not k.startswith("optim") and k not in mutable]
    if differing:
        details = ", ".join(f"model.{k}: {saved_cfg.get(k)!r} there, {our_cfg.get(k)!r} here"
                            for k in differing)
        raise CheckpointError(f"{path} was trained with another model config ({details})")


def rng_state() -> dict[str, Any]:
    """Every random generator a run draws from (Python, NumPy, torch CPU and CUDA), as tensors and plain
    values."""
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def gather_rng_states() -> dict[str, Any]:
    """A checkpoint's generator states: "rng", this process's (all a single process needs), and
    "rng_by_rank", every process's in rank order, gathered to rank 0 (None on the others). Every
    process calls it (a collective under torchrun), so that on resume each rank continues its own."""
    own = rng_state()
    # Sent as torch.save bytes and read like a checkpoint: tensors inside gather_object's plain pickle fail
    # to load in some torch versions (2.14: "UntypedStorage has no attribute 'dtype'").
    sent = io.BytesIO()
    torch.save(own, sent)
    gathered = distributed.gather_to_main(sent.getvalue())
    if gathered is None:
        return {"rng": own, "rng_by_rank": None}
    others = [torch.load(io.BytesIO(data), weights_only=True) for data in gathered[1:]]
    return {"rng": own, "rng_by_rank": [own, *others]}


def restore_rng(rng: dict[str, Any]) -> None:
    """Set the generators from rng_state()'s values. Generator states live on the CPU, whatever
    map_location loaded them to; only as many CUDA devices as this process sees are set."""
    random.setstate(rng["python"])
    np.random.set_state((rng["numpy"][0], rng["numpy"][1].cpu().numpy(), *rng["numpy"][2:]))
    torch.set_rng_state(rng["torch"].cpu())
    if rng["cuda"] and torch.cuda.is_available():
        cuda_states = rng["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([device_state.cpu() for device_state in cuda_states])


def restore_rank_rng(state: dict[str, Any], rank: int, seed: int) -> None:
    """Continue this process's generators from a checkpoint: the states its rank saved. A rank the
    checkpoint lacks (a resume with more processes than saved it, or a checkpoint from before
    gentrain kept every rank's: rank 0's alone) is seeded from (seed, rank, step): deterministic,
    but new streams."""
    by_rank = state.get("rng_by_rank") or [state["rng"]]
    if rank < len(by_rank):
        restore_rng(by_rank[rank])
        return
    log.info("the checkpoint has no generator states of rank %d (%d saved): seeded from the seed, "
             "rank and step", rank, len(by_rank))
    seed_generators(seed + 1_000_003 * rank + int(state["step"]))


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every value of every floating-point tensor is finite (one device sync)."""
    floating = [t for t in tensors if t.is_floating_point()]
    return not floating or bool(torch.stack([torch.isfinite(t).all() for t in floating]).all())


class CheckpointManager:
    def __init__(self, directory: Path, keep: int = 1):
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

    def step_path(self, step: int) -> Path:
        return self.directory / f"step_{step:08d}.pt"

    def save(self, state: dict[str, Any], step: int, *, best: bool, keep_also: Optional[str] = None) -> Path:
        """Write step_<step>.pt (and best.pt when `best`), then delete step files beyond the newest `keep`,
        except `keep_also` (the newest good checkpoint's name)."""
        real_folder(self.directory, self.directory.parent)
        path = self.step_path(step)
        atomic_save({"format": FORMAT, **state}, path)
        if best:
            self._mark_best(path)
        for old in self.step_files()[: -self.keep]:
            if old.name != keep_also:
                old.unlink(missing_ok=True)
        return path

    def _mark_best(self, path: Path) -> None:
        """best.pt becomes a hard link to `path` (a copy where links are not supported), swapped in
        atomically."""
        best = self.directory / "best.pt"
        tmp = best.with_name(f".best.pt.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)
        except OSError:
            atomic_save(load_checkpoint(path), tmp)
        os.replace(tmp, best)
