"""CycleGAN (Zhu et al., 2017, "Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial Networks").

Two generators, G: A -> B (`to_b`) and F: B -> A (`to_a`), the paper's ResNet generator (7x7 convolution, two
stride-2 convolutions, residual blocks, two fractionally-strided convolutions, 7x7 convolution; instance norm,
reflection padding), and a PatchGAN critic per domain. Generators minimise

    (D_B(G(a)) - 1)^2 + (D_A(F(b)) - 1)^2 + lambda (|F(G(a)) - a|_1 + |G(F(b)) - b|_1)
                                          + identity_weight lambda (|G(b) - b|_1 + |F(a) - a|_1)

(means over pixels and patches, images in [-1, 1]); each critic 0.5 ((D(real) - 1)^2 + D(fake)^2), where the
fakes come through a history pool of earlier generated images (Shrivastava et al., 2017). Training data is
dataset=unpaired: batch.x from domain A, batch.other from domain B, drawn independently.
"""

from __future__ import annotations

import itertools
from typing import Optional

import torch
from torch import Tensor, nn

from gentrain.data.batches import Batch
from gentrain.data.schemas import DataInfo
from gentrain.errors import ConfigError
from gentrain.models.base import GenerativeModel, LossOutput, OptimizerSpec, Update
from gentrain.models.schemas.gan import CycleGANConfig


def init_weights(module: nn.Module) -> None:
    """N(0, 0.02) convolution weights, zero biases (the reference code's 'normal' init)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3), nn.InstanceNorm2d(width), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3), nn.InstanceNorm2d(width),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """c7s1-w, d2w, d4w, R4w x blocks, u2w, uw, c7s1-C with tanh (the paper's appendix, w = generator_width)."""

    def __init__(self, channels: int, width: int, blocks: int):
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(channels, width, 7), nn.InstanceNorm2d(width),
                                   nn.ReLU(True)]
        for mult in (1, 2):
            layers += [nn.Conv2d(width * mult, width * mult * 2, 3, 2, 1), nn.InstanceNorm2d(width * mult * 2),
                       nn.ReLU(True)]
        layers += [ResidualBlock(width * 4) for _ in range(blocks)]
        for mult in (4, 2):
            layers += [nn.ConvTranspose2d(width * mult, width * mult // 2, 3, 2, 1, output_padding=1),
                       nn.InstanceNorm2d(width * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class PatchCritic(nn.Module):
    """PatchGAN: 4x4 convolutions, `layers` of them with stride 2, one with stride 1, then one to a score per
    patch (70x70 patches with 3 stride-2 layers); instance norm after all but the first and last."""

    def __init__(self, channels: int, width: int, layers: int):
        super().__init__()
        modules: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, layers + 1):
            previous, mult = mult, min(2 ** n, 8)
            stride = 2 if n < layers else 1
            modules += [nn.Conv2d(width * previous, width * mult, 4, stride, 1), nn.InstanceNorm2d(width * mult),
                        nn.LeakyReLU(0.2, True)]
        modules.append(nn.Conv2d(width * mult, 1, 4, 1, 1))
        self.net = nn.Sequential(*modules)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ImagePool(nn.Module):
    """A history of generated images, as the reference ImagePool (Zhu et al.) keeps it, one image of the batch after
    the other: until it is full each new image is stored and returned; then each new image is returned as it is
    with probability 1/2, or else swapped for a random stored one, which it replaces (so a later image of the same
    batch that picks that slot gets the earlier one back). The coins and slots are drawn on the CPU's generator
    (torch.rand(n), then torch.randint(size, (n,))), so a query never waits for the device."""

    def __init__(self, size: int, shape: tuple[int, ...]):
        super().__init__()
        self.size = size
        self.register_buffer("images", torch.zeros(size, *shape))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # saved, so a resumed run keeps its pool
        self.filled = 0  # count, kept on the host so that a query never waits for the device

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "count" in state_dict:
            self.filled = int(state_dict[prefix + "count"])

    @torch.no_grad()
    def query(self, images: Tensor) -> Tensor:
        if self.size == 0:
            return images
        images = images.detach()
        coins, slots = torch.rand(len(images)).tolist(), torch.randint(self.size, (len(images),)).tolist()
        holder: dict[int, int] = {}  # slot -> the image of this batch stored there now
        from_pool: list[tuple[int, int]] = []  # (image, slot): returned images that were stored before this batch
        from_batch: list[tuple[int, int]] = []  # (image, earlier image of this batch it gets back)
        for i, (coin, slot) in enumerate(zip(coins, slots)):
            if self.filled < self.size:
                holder[self.filled] = i
                self.filled += 1
            elif coin > 0.5:
                if slot in holder:
                    from_batch.append((i, holder[slot]))
                else:
                    from_pool.append((i, slot))
                holder[slot] = i
        out = images.clone()
        if from_pool:  # read before the pool is written below
            rows, stored = zip(*from_pool)
            out[list(rows)] = self.images[list(stored)]
        if from_batch:
            rows, earlier = zip(*from_batch)
            out[list(rows)] = images[list(earlier)]
        if holder:
            self.images[list(holder)] = images[list(holder.values())]
        self.count.fill_(self.filled)
        return out


class CycleGAN(GenerativeModel, config=CycleGANConfig):
    """Unpaired translation between domains A and B."""

    main_metric = "fid"  # the mean of fid_a2b (G(a) against domain B) and fid_b2a (metrics/translation.py)
    progress_terms = ("generator_loss", "critic_loss")
    domains = 2

    def __init__(self, cfg: CycleGANConfig, data: DataInfo):
        super().__init__(data)
        if data.height != data.width or data.height % 4:
            raise ConfigError(f"model=cyclegan needs square images with a side divisible by 4 (28, 32, 64, 128, "
                              f"256), got {data.height}x{data.width}")
        self.cfg = cfg
        blocks = cfg.residual_blocks or (9 if data.height >= 256 else 6)
        layers = cfg.critic_layers or (3 if data.height >= 64 else 2)
        self.to_b = ResnetGenerator(data.channels, cfg.generator_width, blocks)  # G
        self.to_a = ResnetGenerator(data.channels, cfg.generator_width, blocks)  # F
        self.critic_a = PatchCritic(data.channels, cfg.critic_width, layers)
        self.critic_b = PatchCritic(data.channels, cfg.critic_width, layers)
        self.apply(init_weights)
        shape = (data.channels, data.height, data.width)
        self.pool_a, self.pool_b = ImagePool(cfg.pool_size, shape), ImagePool(cfg.pool_size, shape)
        self._fakes: Optional[tuple[Tensor, Tensor]] = None  # the generator step's G(a), F(b) for the critic step

    def scale(self, x: Tensor) -> Tensor:
        """uint8 images -> floats in [-1, 1], the generators' tanh range."""
        return x.float() * (2.0 / (self.data.levels - 1)) - 1.0

    def translate(self, images: Tensor, direction: str) -> Tensor:
        """uint8 images of one domain -> the other's, as floats in [0, 1] (direction 'a2b' or 'b2a')."""
        network = {"a2b": self.to_b, "b2a": self.to_a}[direction]
        return ((network(self.scale(images)).float() + 1.0) / 2.0).clamp(0.0, 1.0)

    # --- training ---------------------------------------------------------------------------------------
    def optimizer_specs(self) -> dict[str, OptimizerSpec]:
        return {
            "generator": OptimizerSpec(itertools.chain(self.to_b.parameters(), self.to_a.parameters()),
                                       self.cfg.optim_generator),
            "critic": OptimizerSpec(itertools.chain(self.critic_a.parameters(), self.critic_b.parameters()),
                                    self.cfg.optim_critic),
        }

    def updates(self) -> list[Update]:
        return [Update("generator", self.generator_loss), Update("critic", self.critic_loss)]

    def generator_loss(self, batch: Batch, step: int) -> LossOutput:
        a, b = self.scale(batch.x), self.scale(batch.other)
        fake_b, fake_a = self.to_b(a), self.to_a(b)
        adversarial = ((self.critic_b(fake_b).float() - 1).pow(2).mean()
                       + (self.critic_a(fake_a).float() - 1).pow(2).mean())
        cycle = (self.to_a(fake_b) - a).abs().mean() + (self.to_b(fake_a) - b).abs().mean()
        loss = adversarial + self.cfg.cycle_weight * cycle
        logs = {"adversarial_loss": adversarial.detach(), "cycle_loss": cycle.detach()}
        if self.cfg.identity_weight > 0:
            identity = (self.to_b(b) - b).abs().mean() + (self.to_a(a) - a).abs().mean()
            loss = loss + self.cfg.identity_weight * self.cfg.cycle_weight * identity
            logs["identity_loss"] = identity.detach()
        self._fakes = (fake_a.detach(), fake_b.detach())
        return LossOutput(loss, {"generator_loss": loss.detach(), **logs})

    def critic_loss(self, batch: Batch, step: int) -> LossOutput:
        a, b = self.scale(batch.x), self.scale(batch.other)
        if self._fakes is None:  # the generator step did not run first (a resumed step): translate again
            with torch.no_grad():
                self._fakes = (self.to_a(b), self.to_b(a))
        fake_a, fake_b = self.pool_a.query(self._fakes[0]), self.pool_b.query(self._fakes[1])
        self._fakes = None
        losses = {}
        for name, critic, real, fake in (("a", self.critic_a, a, fake_a), ("b", self.critic_b, b, fake_b)):
            losses[name] = 0.5 * ((critic(real).float() - 1).pow(2).mean() + critic(fake).float().pow(2).mean())
        loss = losses["a"] + losses["b"]
        return LossOutput(loss, {"critic_loss": loss.detach(), "critic_loss_a": losses["a"].detach(),
                                 "critic_loss_b": losses["b"].detach()})

    def ema_module(self) -> nn.Module:
        return nn.ModuleList([self.to_b, self.to_a])

    # --- evaluation and images --------------------------------------------------------------------------
    def evaluate(self, batch: Batch, *, final: bool = False) -> dict[str, Tensor]:
        a, b = self.scale(batch.x), self.scale(batch.other)
        error_a = (self.to_a(self.to_b(a)) - a).abs().flatten(1).mean(1) / 2  # in units of the [0, 1] range
        error_b = (self.to_b(self.to_a(b)) - b).abs().flatten(1).mean(1) / 2
        return {"cycle_error_a": error_a, "cycle_error_b": error_b, "cycle_error": (error_a + error_b) / 2}

    def evaluation_text(self, final: bool) -> str:
        return "cycle errors"

    def metric_notes(self) -> list[str]:
        return ["cycle_error_a / cycle_error_b: mean |F(G(a)) - a| / |G(F(b)) - b| per pixel of images in [0, 1], "
                "on the split's images of each domain; cycle_error their mean"]

    def draw(self, n: int, labels: Optional[Tensor], generator: Optional[torch.Generator],
             temperature: Optional[float]) -> Tensor:
        raise ConfigError("CycleGAN translates images instead of sampling them: gentrain-sample run=<run> "
                          "translate=a2b input=<folder of images> (or b2a)")

    @torch.no_grad()
    def visualize(self, batch: Batch, generator: torch.Generator) -> dict[str, Tensor]:
        """Rows of a | G(a) | F(G(a)) and b | F(b) | G(F(b)) for up to 8 validation images of each domain."""
        def there_and_back(images: Tensor, there: nn.Module, back: nn.Module) -> Tensor:
            x = self.scale(images)
            translated = there(x)
            return ((torch.stack([x, translated, back(translated)], 1).float() + 1.0) / 2.0).clamp(0.0, 1.0)

        return {"a_to_b": there_and_back(batch.x[:8], self.to_b, self.to_a),
                "b_to_a": there_and_back(batch.other[:8], self.to_a, self.to_b)}
