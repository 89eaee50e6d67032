"""The pixel Transformer's own checks. The family's exact tests cover it in test_autoregressive.py (causality
and full cover of the past by reverse-mode Jacobians, normalisation over every image, 8 bits/dim for a uniform
output, the cached sampler = the whole network); here: the key/value cache over chunks of any length, a
completion through the cache, the work a sample costs (each pixel's token once), causality under dropout, and
the config errors."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
import torch

from conftest import gentrain_in_process
from gentrain.config import problems
from gentrain.data.batches import Batch
from gentrain.data.schemas import DataInfo
from gentrain.errors import ConfigError
from gentrain.models.autoregressive import AutoregressiveNetwork, PixelOutput, SamplingSession
from gentrain.models.pixel_transformer import PixelTransformer, PixelTransformerSession
from gentrain.models.schemas.pixel_transformer import PixelTransformerConfig
from gentrain.nn import colour_groups
from gentrain.nn.transformer import KeyValueCache, TransformerBlock
from test_autoregressive import build


@pytest.mark.parametrize("key_value_heads", [None, 2, 1])
def test_the_cache_over_chunks_of_any_length_gives_the_whole_sequence(key_value_heads):
    """Positions fed a few at a time (one, several, after cached ones) get what one pass over the whole
    sequence gives: the explicit mask of a chunk after cached positions is the causal one, shifted; with
    fewer key/value heads than query heads, the cache holds only those."""
    torch.manual_seed(0)
    block = TransformerBlock(32, 4, 2, 0.0, key_value_heads).double().eval()
    x = torch.randn(3, 11, 32, dtype=torch.double)
    cache = KeyValueCache(3, key_value_heads or 4, 11, 8, x)
    parts, start = [], 0
    for size in (1, 3, 1, 4, 2):
        parts.append(block(x[:, start : start + size], cache))
        start += size
    torch.testing.assert_close(torch.cat(parts, 1), block(x), rtol=0, atol=1e-12)


def chunks_through_the_blocks(model, run) -> list[int]:
    """The lengths of the token chunks the first block computes while `run()` draws."""
    lengths: list[int] = []
    hook = model.network.blocks[0].register_forward_pre_hook(lambda _, args: lengths.append(args[0].shape[1]))
    try:
        run()
    finally:
        hook.remove()
    return lengths


@pytest.mark.parametrize("output", [PixelOutput.softmax, PixelOutput.logistic_mixture])
def test_a_completion_goes_through_the_cache_with_the_whole_networks_parameters(output):
    """Completing the bottom rows: the given rows go through the blocks in one chunk, then each pixel's token
    once; the parameters used at every step are the whole network's on the finished images, and the images
    are those of the sampler that runs the whole network at every step."""
    channels, levels, height, width, first_row = 3, 6, 6, 5, 3
    model = build("pixel_transformer", DataInfo(channels, height, width, levels, 3), output=output,
                  conditional=True, num_mixtures=2).float()
    per_subpixel = output is PixelOutput.softmax
    x = torch.randint(0, levels, (4, channels, height, width))
    labels = torch.tensor([0, 2, 1, 2])
    steps: list[tuple[int, int, torch.Tensor]] = []
    original = PixelTransformerSession.params

    def recording(self, i, j):
        steps.append((i, j, original(self, i, j)))
        return steps[-1][2]

    completed = {}

    def complete():
        completed["images"] = model.complete(Batch(x, labels), torch.Generator().manual_seed(0))

    with mock.patch.object(PixelTransformerSession, "params", recording):
        chunks = chunks_through_the_blocks(model, complete)
    images = (completed["images"] * (levels - 1)).round().long()
    assert torch.equal(images[:, :, :first_row], x[:, :, :first_row])
    pixels = (height - first_row) * width
    assert chunks == [first_row * width + 1] + [1] * (pixels - 1)

    with torch.no_grad():
        whole = model.network(model.network_input(images), model.network.embed_labels(labels))
    groups = colour_groups(model.likelihood.num_params, channels if per_subpixel else 1)
    colour_of_step = {}
    for i, j, params in steps:
        colour = colour_of_step[i, j] = colour_of_step.get((i, j), -1) + 1
        chosen = groups == colour if per_subpixel else groups >= 0
        torch.testing.assert_close(params[:, chosen, 0, 0], whole[:, chosen, i, j], rtol=0, atol=1e-5)
    assert len(steps) == pixels * (channels if per_subpixel else 1)

    def naive(self, inputs, labels, generator):  # the whole network at every step
        return SamplingSession(self.network, inputs, self.network.embed_labels(labels))

    with mock.patch.object(PixelTransformer, "sampling_session", naive), \
            mock.patch.object(type(model.network), "params_at", AutoregressiveNetwork.params_at):
        slow = model.complete(Batch(x, labels), torch.Generator().manual_seed(0))
    assert torch.equal(completed["images"], slow)


def test_a_sample_computes_each_pixels_token_once():
    """Each new pixel costs one token's work: 4x5 RGB pixels drawn colour by colour are 20 chunks of one
    token (the colours after the first reuse their pixel's features)."""
    model = build("pixel_transformer", DataInfo(3, 4, 5, 4, None), output=PixelOutput.softmax).float()
    generator = torch.Generator().manual_seed(0)
    lengths = chunks_through_the_blocks(model, lambda: model.sample(2, generator=generator))
    assert lengths == [1] * 20


def test_dropout_in_training_keeps_the_ordering():
    """With dropout active (training mode, the same seed for both passes), changing pixels from t on leaves
    the parameters of every position up to t unchanged, and changes later ones."""
    height = width = 4
    model = build("pixel_transformer", DataInfo(1, height, width, 2, None), output=PixelOutput.bernoulli,
                  dropout=0.5).train()
    x = torch.rand(3, 1, height, width, dtype=torch.double) * 2 - 1
    t = 6  # raster position of pixel (1, 2)
    changed = x.clone().flatten(2)
    changed[:, :, t:] = -changed[:, :, t:]
    changed = changed.view_as(x)

    def params(images, seed):
        torch.manual_seed(seed)
        return model.network(images).flatten(1)  # (B, positions) of the Bernoulli logit

    assert not torch.equal(params(x, 0), params(x, 1)), "dropout is not active"
    before, after = params(x, 0), params(changed, 0)
    torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], rtol=0, atol=0)
    assert (after[:, t + 1 :] != before[:, t + 1 :]).all()


def test_config_errors_are_one_line():
    assert next(problems(PixelTransformerConfig(hidden_channels=30, num_heads=4), "model.")).startswith(
        "model.hidden_channels (30) must be a multiple of model.num_heads (4)")
    assert next(problems(PixelTransformerConfig(dropout=1.0), "model.")).startswith("model.dropout must be")
    assert next(problems(PixelTransformerConfig(num_heads=4, key_value_heads=3), "model.")).startswith(
        "model.num_heads (4) must be a multiple of model.key_value_heads (3)")
    with pytest.raises(ConfigError, match="model.head_channels must be at least 3"):
        PixelTransformer(PixelTransformerConfig(head_channels=2, output=PixelOutput.softmax),
                         DataInfo(3, 8, 8, 256, None))
    with pytest.raises(ConfigError, match="bernoulli needs binarized data"):
        PixelTransformer(PixelTransformerConfig(output=PixelOutput.bernoulli), DataInfo(1, 8, 8, 256, None))


def test_the_command_refuses_heads_that_do_not_split_the_width(tmp_path: Path):
    status, _, err = gentrain_in_process("model=pixel_transformer", "model.num_heads=3",
                                         run_dir=tmp_path / "run")
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "model.num_heads" in lines[0], err
