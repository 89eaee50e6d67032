"""Optimizers and learning-rate schedules built from config."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from gentrain.config import LRSchedule, OptimizerConfig, OptimizerName, TrainerConfig
from gentrain.errors import ConfigError


def build_optimizer(params, cfg: OptimizerConfig, lr_override: Optional[float], device: torch.device) -> Optimizer:
    params = [p for p in params if p.requires_grad]
    lr = lr_override if lr_override is not None else cfg.lr
    # Fused kernels on CUDA, multi-tensor (foreach) updates elsewhere.
    speed = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if cfg.name in (OptimizerName.adam, OptimizerName.adamw):
        if len(cfg.betas) != 2:
            raise ConfigError(f"optimizer betas must be two numbers, got {list(cfg.betas)}")
        cls = torch.optim.Adam if cfg.name is OptimizerName.adam else torch.optim.AdamW
        return cls(params, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay, **speed)
    if cfg.name is OptimizerName.rmsprop:
        return torch.optim.RMSprop(params, lr=lr, eps=cfg.eps, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay, foreach=True)
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **speed)


def lr_factor(step: int, schedule: LRSchedule, warmup_steps: int, total_steps: Optional[int]) -> float:
    """Multiplier of the base learning rate at `step`: linear warm-up, then the schedule."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule is LRSchedule.constant:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule is LRSchedule.cosine:
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule is LRSchedule.linear_second_half:
        return min(1.0, 2.0 * (1.0 - progress))
    return 1.0 - progress


def build_scheduler(optimizer: Optimizer, cfg: TrainerConfig, total_steps: Optional[int]) -> LambdaLR:
    if cfg.lr_schedule is not LRSchedule.constant and total_steps is None:
        raise ConfigError(
            f"trainer.lr_schedule={cfg.lr_schedule.value} needs a known length: "
            "set trainer.max_steps or trainer.max_epochs"
        )
    return LambdaLR(optimizer, lambda step: lr_factor(step, cfg.lr_schedule, cfg.warmup_steps, total_steps))
