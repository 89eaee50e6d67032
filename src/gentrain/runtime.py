"""Where and how a run executes: the device, mixed precision and seeding."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import resource
import time
from typing import Optional

import numpy as np
import torch

from gentrain.config import Precision
from gentrain.errors import ConfigError

log = logging.getLogger(__name__)
_IMPORTED = time.time()


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


def use_channels_last(requested: Optional[bool], model: torch.nn.Module, device: torch.device) -> bool:
    """trainer.channels_last: null = on for convolutional models on CUDA, and on a CPU for the models that say
    it helps them there (channels_last_on_cpu); never for models without convolutions."""
    convolutional = any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in model.modules())
    if requested is None:
        requested = device.type == "cuda" or getattr(model, "channels_last_on_cpu", False)
    return convolutional and requested


def check_precision(precision: Precision, device: torch.device) -> None:
    if precision is Precision.fp16 and device.type != "cuda":
        raise ConfigError(f"trainer.precision=fp16 needs a CUDA device (this run is on {device.type}); "
                          "use bf16 or fp32")
    if precision is Precision.bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("trainer.precision=bf16 is not supported by this GPU; use fp16 or fp32")


def autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager:
    if precision is Precision.fp32:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision is Precision.bf16 else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_generators(seed: int) -> None:
    """Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def seed_everything(seed: int, deterministic: bool) -> None:
    seed_generators(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        # Shapes are fixed from step to step, so cuDNN's one-off search for the fastest kernels pays off.
        torch.backends.cudnn.benchmark = True


def available_cores() -> int:
    """The cores this process may run on (its affinity mask: a SLURM allocation or taskset, not the machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def local_processes(parallel_jobs: int = 1) -> int:
    """Processes of this command that share this machine's cores: torchrun's on this node times parallel jobs."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) * max(1, parallel_jobs)


def configure_threads(requested: Optional[int], processes: int) -> int:
    """Set torch's CPU threads (trainer.num_threads, else $OMP_NUM_THREADS, else cores / processes), log the choice,
    and warn when the
    threads of this command, or other programs, already ask for more cores than there are: two processes with
    torch's default thread count on 2 cores ran 14x slower than with one thread each."""
    cores = available_cores()
    from_environment = os.environ.get("OMP_NUM_THREADS", "")
    if requested:
        threads, source = requested, "trainer.num_threads"
    elif from_environment.isdigit() and int(from_environment) > 0:
        threads, source = int(from_environment), "OMP_NUM_THREADS"
    else:
        threads, source = max(1, cores // processes), f"{cores} core(s) available / {processes} process(es)"
    torch.set_num_threads(threads)
    log.info("CPU threads: %d (%s)", threads, source)
    if threads * processes > cores:
        log.warning("%d process(es) x %d thread(s) on %d core(s): the CPU is oversubscribed and every process slows "
                    "down; lower trainer.num_threads", processes, threads, cores)
    else:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        if load > cores:
            log.warning("the machine is busy (load average %.1f on %d cores): other programs share these cores, "
                        "so speed figures will be low", load, cores)
    return threads


def process_seconds() -> float:
    """Seconds since this process started (Linux: the creation time of /proc/<pid>; elsewhere since gentrain was
    imported)."""
    try:
        return time.time() - os.stat(f"/proc/{os.getpid()}").st_ctime
    except OSError:
        return time.time() - _IMPORTED


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by tensors on CUDA; peak resident memory of the process elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
