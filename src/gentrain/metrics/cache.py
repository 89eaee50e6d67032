"""Small files of tensors that metrics compute once and reuse: trained feature classifiers, reference statistics.

Written atomically, read with weights_only=True; an unreadable file is rebuilt, an unwritable cache only
costs the next run the time to build again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger(__name__)


def cached(path: Path, what: str, build: Callable[[], dict]) -> dict:
    """The tensors stored at `path`, or build() saved there on the first call."""
    if path.exists():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            log.info("loaded the %s from %s", what, path)
            return state
        except (OSError, RuntimeError, EOFError) as err:
            log.warning("ignoring an unreadable cached %s %s (%s); computing it again", what, path, err)
    state = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        log.info("cached the %s in %s", what, path)
    except OSError as err:
        log.warning("could not cache the %s in %s (%s); the next run computes it again", what, path.parent, err)
    return state
