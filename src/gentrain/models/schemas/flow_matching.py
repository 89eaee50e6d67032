"""Options of flow matching (gentrain/models/flow_matching.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar, Iterator

from gentrain.config import SIZE_MAX, OptimizerConfig, setting
from gentrain.models.schemas import guidance_problems
from gentrain.registry import model_config

# The ODE likelihoods' default (flow matching, and DDPM's probability flow): images of at most this many
# values get the exact divergence, larger ones Hutchinson's estimate
EXACT_DIVERGENCE_MAX_DIMS = 64


class ODESolver(Enum):
    euler = "euler"  # fixed steps, NFE = steps
    heun = "heun"  # fixed steps, NFE = 2 * steps
    adaptive = "adaptive"  # Dormand-Prince 5(4) with rtol / atol, NFE counted per image


def _optim() -> OptimizerConfig:
    return OptimizerConfig(lr=2e-4)  # Adam, the U-Net diffusion models' usual rate for a small batch


@model_config("flow_matching")
@dataclass
class FlowMatchingConfig:
    # The velocity network: the U-Net of gentrain/nn/unet.py (sides of the attention layers as listed)
    base_channels: int = setting(32, min=1, max=4096)
    channel_mult: list[int] = setting(factory=lambda: [1, 2, 2], min_items=1, min=1, max=64)
    num_res_blocks: int = setting(1, min=1, max=64)
    attention_resolutions: list[int] = setting(factory=lambda: [7, 8], min=1, max=SIZE_MAX)
    attention_heads: int = setting(1, min=1, max=256)
    dropout: float = setting(0.1, min=0, below=1)
    # x_t = (1 - (1 - sigma_min) t) x0 + t x1: noise x0 at t = 0, data x1 at t = 1; 0 is rectified flow's path
    sigma_min: float = setting(0.0, min=0, below=1)
    conditional: bool = False  # class-conditional, with classifier-free guidance
    label_dropout: float = setting(0.1, min=0, below=1)  # training steps' share of labels replaced by "none"
    guidance_scale: float = setting(1.0, min=0, max=100)  # v_none + w (v_label - v_none); 1 = no guidance
    # Sampling (sample grids, FID): noise at t = 0 carried to t = 1
    solver: ODESolver = ODESolver.heun
    steps: int = setting(50, min=1, max=100_000)  # of the fixed-step solvers
    # The ODE likelihood of the end-of-run test pass (data at t = 1 carried to the noise at t = 0)
    likelihood_solver: ODESolver = ODESolver.adaptive
    likelihood_steps: int = setting(100, min=1, max=100_000)  # of a fixed-step likelihood solver
    # the adaptive solver's tolerances (sampling and likelihood)
    rtol: float = setting(1e-5, above=0, below=1)
    atol: float = setting(1e-5, above=0, below=1)
    # The divergence is exact (one reverse pass per dimension) up to this many dimensions C*H*W, else
    # Hutchinson's estimate with `probes` Rademacher probes per image (their spread gives a standard error)
    exact_divergence_max_dims: int = setting(EXACT_DIVERGENCE_MAX_DIMS, min=0, max=SIZE_MAX)
    probes: int = setting(4, min=2, max=1000)
    optim: OptimizerConfig = field(default_factory=_optim)

    mutable: ClassVar[frozenset[str]] = frozenset({
        "label_dropout", "guidance_scale", "solver", "steps", "likelihood_solver", "likelihood_steps", "rtol",
        "atol", "exact_divergence_max_dims", "probes",
    })
    evaluation_budget: ClassVar[frozenset[str]] = frozenset({
        "steps", "likelihood_steps", "likelihood_solver",
    })

    def problems(self, prefix: str) -> Iterator[str]:
        yield from guidance_problems(self.conditional, self.guidance_scale, prefix, "velocity")
