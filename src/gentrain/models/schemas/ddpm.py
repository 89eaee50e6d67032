"""Options of the denoising diffusion model (gentrain/models/ddpm.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar, Iterator

from gentrain.config import OptimizerConfig, setting
from gentrain.models.schemas import guidance_problems
from gentrain.registry import model_config


class NoiseSchedule(Enum):
    linear = "linear"  # Ho et al.: betas linear from beta_start to beta_end (given for T = 1000)
    cosine = "cosine"  # Nichol & Dhariwal: abar_t = cos^2((t / T + s) / (1 + s) pi / 2) / (same at t = 0)


class Prediction(Enum):
    eps = "eps"  # the noise (Ho et al.)
    x0 = "x0"  # the clean image
    v = "v"  # v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho, 2022)


class ReverseVariance(Enum):
    fixed_large = "fixed_large"  # sigma_t^2 = beta_t
    fixed_small = "fixed_small"  # sigma_t^2 = beta~_t, the variance of q(x_{t-1} | x_t, x_0)
    learned = "learned"  # interpolated between the two in the log domain by the network (Nichol & Dhariwal)


class Objective(Enum):
    simple = "simple"  # L_simple: the mean squared error of the prediction (Ho et al.)
    # L_simple + vlb_weight * L_vlb, the bound through the variances only (Nichol & Dhariwal)
    hybrid = "hybrid"


class Sampler(Enum):
    ancestral = "ancestral"  # p(x_{t-1} | x_t) step by step (fewer steps than T: the respaced chain)
    ddim = "ddim"  # Song et al.'s DDIM with ddim_eta (0: deterministic; 1: the ancestral sampler with beta~)


class Dequantization(Enum):
    uniform = "uniform"  # y uniform in the pixel's bin around x (Song et al. 2021)
    # y ~ N(alpha x, sigma^2) of the ODE's first noise level, truncated to the bin scaled by alpha (Zheng et
    # al. 2023): what the model's density there was trained on, so the bound is tight when sigma << the bin
    truncated_normal = "truncated_normal"


@dataclass
class ProbabilityFlowOptions:
    """The end-of-run test pass of a diffusion model may also score the probability-flow ODE likelihood (Song
    et al. 2021; gentrain/models/probability_flow.py): adaptive Dormand-Prince 5(4) at rtol = atol =
    ode_tolerance, the exact divergence for images of at most EXACT_DIVERGENCE_MAX_DIMS (64) values
    (schemas/flow_matching.py), else Hutchinson's with ode_probes Rademacher probes; the pixels dequantized
    as ode_dequantization says."""

    ode_likelihood: bool = False
    ode_tolerance: float = setting(1e-5, above=0, below=1)
    ode_probes: int = setting(4, min=2, max=1000)
    ode_dequantization: Dequantization = Dequantization.uniform

    # how it is evaluated, not what the weights mean: gentrain-eval may change them (trainer=debug loosens the
    # tolerance)
    ODE_OPTIONS: ClassVar[frozenset[str]] = frozenset({"ode_likelihood", "ode_tolerance", "ode_probes",
                                                       "ode_dequantization"})
    ODE_BUDGET: ClassVar[frozenset[str]] = frozenset({"ode_tolerance"})


@model_config("ddpm")
@dataclass
class DDPMConfig(ProbabilityFlowOptions):
    timesteps: int = setting(1000, min=2, max=100_000)  # T
    schedule: NoiseSchedule = NoiseSchedule.linear
    beta_start: float = setting(1e-4, above=0, below=1)  # linear: beta_1 and beta_T for T = 1000, scaled by
    beta_end: float = setting(0.02, above=0, below=1)  # 1000 / T for other T
    cosine_offset: float = setting(0.008, min=0, max=1)  # s of the cosine schedule
    prediction: Prediction = Prediction.eps
    variance: ReverseVariance = ReverseVariance.fixed_large
    objective: Objective = Objective.simple
    vlb_weight: float = setting(0.001, above=0, max=1e3)  # lambda of the hybrid objective
    # The U-Net (gentrain/nn/unet.py): base_channels * channel_mult[i] feature maps at level i
    # (small defaults, for a quick start on a CPU; experiment=ddpm_cifar10 has the paper's 35.7M parameters)
    base_channels: int = setting(32, min=1, max=4096)
    channel_mult: list[int] = setting(factory=lambda: [1, 2, 2], min_items=1, min=1, max=64)
    num_res_blocks: int = setting(2, min=1, max=64)
    # sides of the levels with self-attention: 16 of 32-pixel images (Ho et al.), 14 of 28-pixel ones
    attention_resolutions: list[int] = setting(factory=lambda: [14, 16], min=1, max=65536)
    attention_heads: int = setting(1, min=1, max=64)
    dropout: float = setting(0.1, min=0, below=1)
    conditional: bool = False  # class labels in, with classifier-free guidance
    label_dropout: float = setting(0.1, min=0, max=1)  # conditional: share of training labels set to "none"
    guidance_scale: float = setting(1.0, min=0, max=100)  # eps_none + scale (eps_label - eps_none); 1: none
    sampler: Sampler = Sampler.ancestral
    sampling_steps: int = setting(1000, min=1, max=100_000)  # S, at most T (a larger value means T)
    ddim_eta: float = setting(0.0, min=0, max=1)
    clip_denoised: bool = True  # samplers clip their x_0 estimate to [-1, 1] (never the bound)
    full_bound: bool = False  # end-of-run test bound: the sum over all T steps (T network calls per image)
    optim: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=2e-4))  # Ho et al.

    # How it samples or is evaluated, not what the weights mean: gentrain-eval may change them
    mutable: ClassVar[frozenset[str]] = frozenset({
        "guidance_scale", "sampler", "sampling_steps", "ddim_eta", "clip_denoised", "full_bound",
        "vlb_weight", "label_dropout"}) | ProbabilityFlowOptions.ODE_OPTIONS
    evaluation_budget: ClassVar[frozenset[str]] = (frozenset({"sampling_steps"})
                                                   | ProbabilityFlowOptions.ODE_BUDGET)

    def problems(self, prefix: str) -> Iterator[str]:
        yield from guidance_problems(self.conditional, self.guidance_scale, prefix, "noise prediction")
        learned = self.variance is ReverseVariance.learned
        if (self.objective is Objective.hybrid) != learned:
            yield (f"{prefix}objective={self.objective.value} with {prefix}variance={self.variance.value}: "
                   f"the hybrid objective is what trains learned variances; use both or neither")
        if self.schedule is NoiseSchedule.linear and self.beta_end * 1000 / self.timesteps >= 1:
            yield (f"{prefix}timesteps={self.timesteps} scales the linear schedule's beta_end to "
                   f"{self.beta_end * 1000 / self.timesteps:.3g} >= 1: raise it")


@model_config("vdm")
@dataclass
class VDMConfig(ProbabilityFlowOptions):
    """Variational diffusion in continuous time (Kingma et al. 2021): gentrain/models/vdm.py."""

    # log-SNR runs linearly from -gamma_min at t = 0 to -gamma_max at t = 1 (gamma = log sigma^2 / alpha^2)
    gamma_min: float = setting(-13.3, min=-30, max=30)
    gamma_max: float = setting(5.0, min=-30, max=30)
    learned_schedule: bool = False  # train both ends of the linear schedule by the bound
    fourier_features: bool = False  # sin and cos of 2^n pi z (n = 7, 8) as extra inputs (the paper's)
    base_channels: int = setting(32, min=1, max=4096)
    channel_mult: list[int] = setting(factory=lambda: [1, 2, 2], min_items=1, min=1, max=64)
    num_res_blocks: int = setting(2, min=1, max=64)
    attention_resolutions: list[int] = setting(factory=lambda: [14, 16], min=1, max=65536)  # as model=ddpm
    attention_heads: int = setting(1, min=1, max=64)
    dropout: float = setting(0.1, min=0, below=1)
    conditional: bool = False  # class labels in, with classifier-free guidance (as model=ddpm)
    label_dropout: float = setting(0.1, min=0, max=1)  # conditional: share of training labels set to "none"
    guidance_scale: float = setting(1.0, min=0, max=100)  # eps_none + scale (eps_label - eps_none); 1: none
    sampling_steps: int = setting(1000, min=2, max=100_000)  # ancestral steps on a uniform grid of t
    clip_denoised: bool = True
    optim: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=2e-4))

    mutable: ClassVar[frozenset[str]] = (frozenset({"sampling_steps", "clip_denoised", "guidance_scale",
                                                    "label_dropout"})
                                         | ProbabilityFlowOptions.ODE_OPTIONS)
    evaluation_budget: ClassVar[frozenset[str]] = (frozenset({"sampling_steps"})
                                                   | ProbabilityFlowOptions.ODE_BUDGET)

    def problems(self, prefix: str) -> Iterator[str]:
        if self.gamma_min >= self.gamma_max:
            yield (f"{prefix}gamma_min={self.gamma_min} must be below {prefix}gamma_max={self.gamma_max}: "
                   f"the noise grows with t")
        yield from guidance_problems(self.conditional, self.guidance_scale, prefix, "noise prediction")
