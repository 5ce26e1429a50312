"""The network: shapes for every option, and the receptive field formula against gradients."""

from __future__ import annotations

import pytest
import torch

from model_export.unet import UNet, UNetConfig, count_parameters, flops_per_pixel, receptive_field


@pytest.mark.parametrize("fusion", ["concat", "add"])
@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
def test_any_multiple_of_the_divisor_keeps_its_size(fusion: str, upsample: str) -> None:
    model = UNet(
        UNetConfig(in_channels=3, classes=2, depth=3, base_channels=4, fusion=fusion, upsample=upsample)
    )
    for h, w in [(8, 8), (24, 40)]:
        assert model(torch.zeros(2, 3, h, w)).shape == (2, 2, h, w)


def test_default_network_size() -> None:
    model = UNet()
    assert model.config.size_divisor == 16
    assert 1.9e6 < count_parameters(model) < 2.5e6
    assert 85e3 < flops_per_pixel(model) < 100e3
    assert receptive_field(model.config) == 200


@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
def test_receptive_field_bounds_the_gradient_support(upsample: str) -> None:
    config = UNetConfig(depth=2, base_channels=4, upsample=upsample)
    torch.manual_seed(0)
    model = UNet(config).eval()
    size = 96
    x = torch.rand(1, 1, size, size, requires_grad=True)
    model(x)[0, 0, size // 2, size // 2].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten()
    support = int(rows.max() - rows.min() + 1)
    rf = receptive_field(config)
    assert support <= rf  # the formula is an upper bound ...
    assert support >= rf - 4  # ... and tight (pixel/pool-cell alignment loses a few px)


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="fusion"):
        UNetConfig(fusion="mul")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="depth"):
        UNetConfig(depth=0)
