"""Small files of tensors that metrics compute once and reuse: trained feature classifiers, reference statistics.

Written atomically, read with weights_only=True; an unreadable file is rebuilt, an unwritable cache
(or a full disk) only costs the next run the time to build again, and leaves no temporary file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch

from gentrain.errors import storage_error
from gentrain.files import write_file

log = logging.getLogger(__name__)


def cached(path: Path, what: str, build: Callable[[], dict], keys: tuple[str, ...] = ()) -> dict:
    """The tensors stored at `path` (a dict holding `keys`), or build() saved there on the first call. A damaged
    file is computed again, with a warning."""
    if path.exists():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing = [k for k in keys if not isinstance(state, dict) or k not in state]
            if missing:
                raise KeyError(f"missing {', '.join(missing)}")
            log.info("loaded the %s from %s", what, path)
            return state
        except Exception as err:  # a damaged file fails in many ways (pickle, zip, key); compute it again
            log.warning("the cached %s %s is damaged (%s: %s); computing it again", what, path, type(err).__name__, err)
    state = build()
    try:  # through a Python file: a full disk is an OSError within torch's error; no temporary is left
        write_file(path, lambda f: torch.save(state, f))
        log.info("cached the %s in %s", what, path)
    except (OSError, RuntimeError) as err:
        if not isinstance(err, OSError) and storage_error(err) is None:
            raise  # torch's own failure, not the disk's
        log.warning("could not cache the %s in %s (%s); the next run computes it again", what,
                    path.parent, storage_error(err) or err)
    return state
