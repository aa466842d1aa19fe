"""Networks: Bressem et al.'s ResNet-18 3D U-Net and the compact residual U-Net."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets.resnet import ResNet, ResNetBlock
from torch import nn

from covidlesionseg.io import InputError
from covidlesionseg.networks import (
    ARCHITECTURES,
    BressemUNet,
    CompactResUNet,
    build_network,
    count_parameters,
)


@pytest.fixture(scope="module")
def bressem() -> BressemUNet:
    torch.manual_seed(0)
    return build_network("bressem_resnet18_unet").eval()


@pytest.fixture(scope="module")
def compact() -> CompactResUNet:
    torch.manual_seed(0)
    return build_network("compact_res_unet").eval()


@pytest.mark.parametrize("size", [(64, 64, 64), (33, 70, 17)])
def test_forward_keeps_input_resolution(bressem: BressemUNet, compact: CompactResUNet, size: tuple[int, ...]) -> None:
    x = torch.randn(1, 1, *size)
    with torch.no_grad():
        for net in (bressem, compact):
            y = net(x)
            assert tuple(y.shape) == (1, 2, *size)
            assert torch.isfinite(y).all()


def test_encoder_is_an_18_layer_3d_resnet(bressem: BressemUNet) -> None:
    enc = bressem.encoder
    assert isinstance(enc, ResNet)
    # stem: 7x7x7 convolution with stride 2, batch norm, ReLU, then max pooling
    assert tuple(enc.conv1.kernel_size) == (7, 7, 7) and tuple(enc.conv1.stride) == (2, 2, 2)
    assert enc.conv1.in_channels == 3 and isinstance(enc.bn1, nn.BatchNorm3d)
    stages = bressem.residual_stages
    assert len(stages) == 4
    assert all(len(stage) == 2 and all(isinstance(b, ResNetBlock) for b in stage) for stage in stages)
    assert [stage[-1].conv2.out_channels for stage in stages] == [64, 128, 256, 512]
    block_convs = sum(1 for stage in stages for block in stage for conv in (block.conv1, block.conv2)
                      if tuple(conv.kernel_size) == (3, 3, 3))
    # As ResNet counts layers: stem convolution + block convolutions + the classifier the decoder replaces.
    assert 1 + block_convs + 1 == 18
    # Conv weights of the encoder equal those of a ResNet-18 with 1x1x1 projection shortcuts.
    expected = 3 * 64 * 7**3
    c_in = 64
    for c_out in (64, 128, 256, 512):
        expected += c_in * c_out * 27 + 3 * c_out * c_out * 27 + (c_in * c_out if c_in != c_out else 0)
        c_in = c_out
    actual = sum(m.weight.numel() for m in enc.modules() if isinstance(m, nn.Conv3d))
    assert actual == expected


def test_skips_come_at_the_expected_resolutions(bressem: BressemUNet) -> None:
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [getattr(bressem.encoder, name).register_forward_hook(
        lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape))) for name in
        ("act", "layer1", "layer2", "layer3", "layer4")]
    try:
        with torch.no_grad():
            bressem(torch.zeros(1, 1, 64, 64, 64))
    finally:
        for h in hooks:
            h.remove()
    assert shapes["act"] == (1, 64, 32, 32, 32)
    assert shapes["layer1"] == (1, 64, 16, 16, 16)
    assert shapes["layer2"] == (1, 128, 8, 8, 8)
    assert shapes["layer3"] == (1, 256, 4, 4, 4)
    assert shapes["layer4"] == (1, 512, 2, 2, 2)
    assert len(bressem.up) == 4


def test_grey_input_is_replicated_to_three_channels(bressem: BressemUNet) -> None:
    torch.manual_seed(1)
    grey = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        from_grey = bressem(grey)
        from_rgb = bressem(grey.repeat(1, 3, 1, 1, 1))
        other = grey.repeat(1, 3, 1, 1, 1)
        other[:, 1] = torch.randn_like(other[:, 1])
        from_other = bressem(other)
    torch.testing.assert_close(from_grey, from_rgb)
    assert not torch.allclose(from_grey, from_other)  # all three channels are used
    with pytest.raises(ValueError, match="input channels"):
        bressem(torch.zeros(1, 2, 32, 32, 32))


@pytest.mark.parametrize("name, kwargs", [("bressem_resnet18_unet", {"widen_factor": 0.25}),
                                          ("compact_res_unet", {})])
def test_gradients_reach_every_parameter(name: str, kwargs: dict) -> None:
    torch.manual_seed(2)
    net = build_network(name, **kwargs).train()
    x = torch.randn(1, 1, *((64, 64, 64) if name.startswith("bressem") else (32, 32, 32)))
    target = (x > 0.5).long()[:, 0]
    loss = nn.functional.cross_entropy(net(x), target)
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    grads = {n: p.grad.abs().sum().item() for n, p in net.named_parameters()}
    first, last = next(iter(grads)), list(grads)[-1]
    assert grads[first] > 0 and grads[last] > 0


def test_parameter_counts(bressem: BressemUNet, compact: CompactResUNet) -> None:
    n_compact = count_parameters(compact)
    n_bressem = count_parameters(bressem)
    encoder = count_parameters(bressem.encoder)
    assert n_compact < 5_000_000
    assert encoder > 30_000_000  # a ResNet-18 in 3D (no classifier) has about 33 M parameters
    assert n_bressem > encoder
    half = count_parameters(BressemUNet(widen_factor=0.5))
    assert 0.2 * n_bressem < half < 0.3 * n_bressem  # widths halve: parameters about quarter


def test_build_network_refuses_unknown_names_and_settings() -> None:
    assert set(ARCHITECTURES) == {"bressem_resnet18_unet", "compact_res_unet"}
    with pytest.raises(InputError, match="compact_res_unet"):
        build_network("vnet")
    with pytest.raises(InputError, match="bad settings"):
        build_network("compact_res_unet", no_such_option=3)
    net = build_network("compact_res_unet", channels=(4, 8, 16), out_channels=3)
    assert isinstance(net, CompactResUNet)
    assert net(torch.zeros(1, 1, 20, 20, 20)).shape == (1, 3, 20, 20, 20)
