"""Where and how a run executes: the device, mixed precision and seeding."""

from __future__ import annotations

import contextlib
import os
import random
import resource

import numpy as np
import torch

from gentrain.config import Precision
from gentrain.errors import ConfigError


def pick_device(name: str) -> torch.device:
    """'auto' picks cuda > mps > cpu (under torchrun: this process's GPU); an explicit device must exist."""
    from gentrain.distributed import context

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", context().local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"trainer.device={name} is not a device name (auto, cpu, cuda, cuda:N, mps)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name}, but no CUDA device is available (use trainer.device=auto or cpu)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"trainer.device={name}, but MPS is not available (use trainer.device=auto or cpu)")
    return device


def check_precision(precision: Precision, device: torch.device) -> None:
    if precision is Precision.fp16 and device.type != "cuda":
        raise ConfigError(f"trainer.precision=fp16 needs a CUDA device (this run is on {device.type}); use bf16 or fp32")
    if precision is Precision.bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("trainer.precision=bf16 is not supported by this GPU; use fp16 or fp32")


def autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager:
    if precision is Precision.fp32:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision is Precision.bf16 else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        # Shapes are fixed from step to step, so cuDNN's one-off search for the fastest kernels pays off.
        torch.backends.cudnn.benchmark = True


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by tensors on CUDA; peak resident memory of the process elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
