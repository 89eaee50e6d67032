"""The shared U-Net (gentrain/nn/unet.py): shapes for MNIST and CIFAR sides (odd sides stop downsampling),
gradients reach every parameter, and the time and the label change the output."""

from __future__ import annotations

import pytest
import torch

from gentrain.nn.unet import UNet


def small(side: int, mult=(1, 2, 2), attention=(7,), **kwargs) -> UNet:
    torch.manual_seed(0)
    net = UNet(1, 2, side, base_channels=8, channel_mult=mult, num_res_blocks=1,
               attention_resolutions=attention, dropout=0.0, **kwargs)
    with torch.no_grad():  # the zero-initialised layers would hide whether t and labels reach the output
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    return net


@pytest.mark.parametrize("side,mult,sides", [(28, (1, 2, 2, 2), [28, 14, 7, 7]),
                                             (32, (1, 2, 2, 2), [32, 16, 8, 4]),
                                             (28, (1, 2), [28, 14])])
def test_shapes_for_mnist_and_cifar_sides(side, mult, sides):
    net = small(side, mult, attention=(7, 8))
    assert net.resolutions == sides
    y = net(torch.randn(2, 1, side, side), torch.tensor([0.0, 999.0]))
    assert y.shape == (2, 2, side, side)


def test_gradients_reach_every_parameter():
    net = small(28, num_classes=10)
    y = net(torch.randn(2, 1, 28, 28), torch.tensor([3.0, 500.0]), torch.tensor([1, 10]))
    y.square().sum().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


@pytest.mark.parametrize("time_embedding", ["sinusoidal", "fourier"])
def test_time_and_label_change_the_output(time_embedding):
    net = small(14, mult=(1, 2), num_classes=3, time_embedding=time_embedding).eval()
    x = torch.randn(1, 1, 14, 14)
    t = torch.tensor([0.3 if time_embedding == "fourier" else 300.0])
    base = net(x, t, torch.tensor([0]))
    assert not torch.allclose(base, net(x, t * 1.5, torch.tensor([0])), atol=1e-5)
    assert not torch.allclose(base, net(x, t, torch.tensor([1])), atol=1e-5)
    assert torch.equal(net(x, t, None), net(x, t, torch.tensor([net.null_label])))  # None: the null label
    torch.testing.assert_close(net(x.repeat(2, 1, 1, 1), t.repeat(2), torch.tensor([0, 0]))[:1], base)


def test_input_fourier_features_and_the_paper_size():
    net = small(8, mult=(1, 2), attention=(4,), input_fourier_exponents=(7, 8))
    assert net.conv_in.in_channels == 5
    assert net(torch.randn(2, 1, 8, 8), torch.zeros(2)).shape == (2, 2, 8, 8)
    ho = UNet(3, 3, 32, 128, (1, 2, 2, 2), 2, (16,), 0.1)  # Ho et al.'s CIFAR-10 network: 35.7M parameters
    assert round(sum(p.numel() for p in ho.parameters()) / 1e6, 1) == 35.7
    with pytest.raises(ValueError, match="labels"):
        ho(torch.randn(1, 3, 32, 32), torch.zeros(1), torch.zeros(1, dtype=torch.long))


@pytest.mark.parametrize("attention,warned", [((5,), True), ((16,), True), ((14, 16), False), ((), False)])
def test_attention_sides_that_match_no_level_are_reported(attention, warned, caplog):
    with caplog.at_level("WARNING", logger="gentrain.nn.unet"):
        net = small(28, attention=attention)
    blocks = [b for b in [*net.down, *net.up] if isinstance(b, torch.nn.ModuleList)]  # not the resamplers
    blocks_with_attention = sum(len(block) == 2 for block in blocks)
    assert (blocks_with_attention == 0) == (not set(attention) & {28, 14, 7})
    assert ("match none of the U-Net's sides 28, 14, 7" in caplog.text) == warned
