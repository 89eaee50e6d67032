"""The VAE's objective, bounds and configuration checks."""

from __future__ import annotations

import pytest
import torch

from gentrain.data.schemas import DataInfo
from gentrain.data.batches import Batch
from gentrain.errors import ConfigError
from gentrain.models.vae import VAE, VAEArch, VAEConfig, VAELikelihood, conv_downsamplings

MNIST = DataInfo(channels=1, height=28, width=28, levels=256, num_classes=10)
BINARY = DataInfo(channels=1, height=28, width=28, levels=2, num_classes=10)


def batch(info: DataInfo, n: int = 16, labels: bool = False) -> Batch:
    x = torch.randint(0, info.levels, (n, info.channels, info.height, info.width), dtype=torch.uint8)
    return Batch(x, torch.randint(0, 10, (n,)) if labels else None)


@pytest.mark.parametrize("size, expected", [(28, (2, 7)), (32, (2, 8)), (64, (3, 8)), (30, (1, 15))])
def test_conv_downsampling_plan(size: int, expected: tuple[int, int]) -> None:
    assert conv_downsamplings(size) == expected


@pytest.mark.parametrize("info", [MNIST, DataInfo(3, 32, 32, 256, 10), DataInfo(3, 64, 64, 256, None)])
@pytest.mark.parametrize("arch", list(VAEArch))
def test_shapes_for_each_architecture(info: DataInfo, arch: VAEArch) -> None:
    model = VAE(VAEConfig(arch=arch, latent_dim=8, hidden=[32], channels=[8, 8]), info)
    b = batch(info, 4)
    out = model.loss(b, step=0)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    samples = model.sample(5)
    assert samples.shape == (5, info.channels, info.height, info.width)
    assert samples.min() >= 0 and samples.max() <= 1


def test_image_size_it_cannot_take() -> None:
    with pytest.raises(ConfigError, match="halves at least twice.*30x30"):
        VAE(VAEConfig(), DataInfo(1, 30, 30, 256, None))


def test_bernoulli_needs_binarized_data() -> None:
    with pytest.raises(ConfigError, match="dataset.binarize"):
        VAE(VAEConfig(likelihood=VAELikelihood.bernoulli), MNIST)
    assert VAE(VAEConfig(), BINARY).likelihood.__class__.__name__ == "Bernoulli"  # auto picks it


def test_conditional_needs_classes() -> None:
    with pytest.raises(ConfigError, match="needs class labels"):
        VAE(VAEConfig(conditional=True), DataInfo(1, 28, 28, 256, None))
    model = VAE(VAEConfig(conditional=True, arch=VAEArch.mlp), MNIST)
    assert torch.isfinite(model.loss(batch(MNIST, 4, labels=True), 0).loss)
    assert model.sample(10).shape == (10, 1, 28, 28)


def test_negative_elbo_is_reconstruction_plus_kl_and_bits_follow() -> None:
    torch.manual_seed(0)
    model = VAE(VAEConfig(arch=VAEArch.mlp, latent_dim=4, hidden=[16]), MNIST)
    out = model.evaluate(batch(MNIST))
    assert torch.allclose(out["neg_elbo_nats"], out["recon_nats"] + out["kl_nats"])
    assert torch.allclose(out["bits_per_dim"], out["neg_elbo_nats"] / (784 * torch.log(torch.tensor(2.0))))
    assert (out["kl_nats"] >= 0).all()


def test_importance_weighted_bound_is_tighter_than_the_elbo() -> None:
    torch.manual_seed(0)
    model = VAE(VAEConfig(arch=VAEArch.mlp, latent_dim=4, hidden=[16]), BINARY)
    b = batch(BINARY, 32)
    with torch.no_grad():
        elbo = torch.stack([model.evaluate(b)["neg_elbo_nats"] for _ in range(50)]).mean(0)  # E[-ELBO]
        iw = model.importance_weighted_nll(b, k=200, max_decodes=1000)  # chunked: 1000 // 32 samples at a time
        single = model.importance_weighted_nll(b, k=1)
    assert (iw < elbo).all()  # Burda et al.: the k-sample bound is at least as tight on average; k=200 beats it
    assert torch.allclose(single.mean(), elbo.mean(), rtol=0.05)  # k = 1 is the ELBO itself


def test_activations_in_place_change_no_number() -> None:
    """The conv VAE's activations work in place (for the k=100 bound's speed): the same loss, gradients and bound
    as activations that allocate their output."""
    torch.manual_seed(0)
    in_place = VAE(VAEConfig(latent_dim=8, channels=[8, 16]), MNIST)
    copying = VAE(VAEConfig(latent_dim=8, channels=[8, 16]), MNIST)
    copying.load_state_dict(in_place.state_dict())
    activations = [m for m in copying.modules() if isinstance(m, torch.nn.SiLU)]
    assert activations and all(m.inplace for m in activations)
    for m in activations:
        m.inplace = False
    b = batch(MNIST)
    results = []
    for model in (in_place, copying):
        torch.manual_seed(1)
        loss = model.loss(b, step=1).loss
        loss.backward()
        with torch.no_grad():
            bound = model.importance_weighted_nll(b, k=5)
        results.append([loss.detach(), bound, *(p.grad for p in model.parameters())])
    assert all(torch.equal(a, c) for a, c in zip(*results))


def test_kl_warmup_and_beta() -> None:
    model = VAE(VAEConfig(arch=VAEArch.mlp, beta=0.5, kl_warmup_steps=100), MNIST)
    assert model.beta_at(0) == 0.0 and model.beta_at(50) == pytest.approx(0.25) and model.beta_at(1000) == 0.5


def test_active_units_count_latents_that_vary() -> None:
    model = VAE(VAEConfig(arch=VAEArch.mlp, latent_dim=3), MNIST)
    means = {"posterior_mean": torch.tensor([0.0, 1.0, 0.0]), "posterior_mean_sq": torch.tensor([0.5, 1.0, 0.001]),
             "neg_elbo_nats": torch.tensor(80.0)}
    metrics = model.summarize(means)
    assert metrics["active_units"] == 1.0 and metrics["neg_elbo_nats"] == 80.0
    assert "posterior_mean" not in metrics


def test_visualize_layouts() -> None:
    model = VAE(VAEConfig(arch=VAEArch.mlp, latent_dim=4), MNIST)
    grids = model.visualize(batch(MNIST, 32), torch.Generator().manual_seed(0))
    assert grids["samples"].shape == (32, 1, 28, 28)
    assert grids["reconstructions"].shape == (8, 8, 1, 28, 28)  # 4 rows of originals, each under its reconstructions
    assert grids["interpolations"].shape == (8, 10, 1, 28, 28)


def test_the_end_of_run_bound_covers_what_the_configuration_says_on_any_machine(shared_data, monkeypatch) -> None:
    """The IW bound covers trainer.final_images (or the planned training images over the bound's cost per image),
    the rest of the split gets the ELBO, and the notes say so. A machine 1000x slower (its clock, here) changes
    nothing: the same command reported 121.70, 122.18 and 121.89 nats when the subset followed the clock."""
    import time

    from gentrain.composition import compose, load_dataset, to_config
    from gentrain.config import Precision
    from gentrain.evaluation import Evaluator

    config = to_config(compose(["model.arch=mlp", "model.hidden=[32]", "model.iw_samples=60", "trainer.max_steps=10",
                                "trainer.batch_size=20", "trainer.eval_batch_size=50", f"dataset.root={shared_data}"]))
    dataset = load_dataset(config.dataset)
    model = VAE(config.model, dataset.info)
    assert model.final_cost == 11.0
    planned = config.trainer.final_images_for(steps_per_epoch=2700, final_cost=model.final_cost)
    assert planned == 50  # ceil(10 x 20 / 11) = 19 images, at least one evaluation batch
    assert (to_config(compose(["trainer.max_steps=1000", "trainer.batch_size=128"])).trainer.final_images_for(
                422, 1 + 100 / 6) == 7246
            and to_config(compose(["trainer.final_images=123"])).trainer.final_images_for(1, 1) == 123)
    evaluator = Evaluator(model, dataset, batch_size=50, precision=Precision.fp32, device=torch.device("cpu"),
                          seed=0, limit=300, progress=False, final_images=planned)
    results, clock = [], time.perf_counter
    for slowdown in (1, 1000):
        monkeypatch.setattr(time, "perf_counter", lambda: clock() * slowdown)
        results.append(evaluator.split("test", final=True))
        covered = evaluator.covered["test"]
        assert covered["neg_elbo_nats"] == 300 and covered["iw_nll_nats"] == 50 == covered["iw_bits_per_dim"]
    assert results[0] == results[1]
    assert any("iw_bits_per_dim, iw_nll_nats cover the first 50 of 300 images (trainer.final_images" in note
               for note in evaluator.notes())
    evaluator.final_images = None  # gentrain-eval: every image
    evaluator.split("test", final=True)
    assert evaluator.covered["test"]["iw_nll_nats"] == 300
