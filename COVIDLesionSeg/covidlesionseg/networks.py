"""3D segmentation networks for the neural lesion engine, built from MONAI blocks.

``BressemUNet`` follows Bressem et al. 2021 ("3D U-Net for segmentation of COVID-19 associated
pulmonary infiltrates using transfer learning: state-of-the-art results on affordable hardware",
arXiv:2101.09976): a U-Net whose encoder is an 18-layer 3D ResNet (the architecture they
initialised from Kinetics-400), a double convolution at the bottom, four upscaling blocks
(transposed convolution + two convolutions with instance norm and ReLU, concatenating the
matching encoder skip), a final residual block and a 1x1x1 convolution.

``CompactResUNet`` is a small residual 3D U-Net (MONAI ``UNet`` with two residual units per level)
sized for CPU inference.

Both take a 1-channel input (windowed, normalised CT, see ``inference.normalize_hu``) in numpy
order ``(N, 1, k, j, i)`` and return class logits ``(N, out_channels, k, j, i)`` at input
resolution; channel 0 is background.  Inputs whose size is not a multiple of the network's total
downsampling factor are padded inside ``forward`` and the logits cropped back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import UnetBasicBlock, UnetOutBlock, UnetResBlock
from monai.networks.layers.factories import Conv
from monai.networks.nets import UNet
from monai.networks.nets.resnet import ResNet
from torch import nn

from covidlesionseg.io import InputError

RESNET18_LAYERS = (2, 2, 2, 2)
RESNET_FEATURES = (64, 128, 256, 512)


def count_parameters(net: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters of ``net``."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Zero-pad the spatial dimensions of ``x`` (N, C, D, H, W) at the far end up to a multiple.

    When every dimension would shrink to one voxel at the bottom of the U-Net, the last one gets
    one more ``multiple``: instance norm needs more than one voxel.
    """
    spatial = tuple(x.shape[2:])
    extra = [(-s) % multiple for s in spatial]
    if all((s + e) // multiple == 1 for s, e in zip(spatial, extra)):
        extra[-1] += multiple
    if not any(extra):
        return x, spatial
    pad: list[int] = []
    for e in reversed(extra):  # F.pad wants the last dimension first
        pad.extend([0, e])
    return F.pad(x, pad), spatial


def _crop(x: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    return x[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)]


class _UpBlock(nn.Module):
    """Transposed convolution (x2), concatenation with the skip, two conv + instance norm + ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.upsample = Conv[Conv.CONVTRANS, 3](in_channels, out_channels, kernel_size=2, stride=2, bias=False)
        self.convs = UnetBasicBlock(3, out_channels + skip_channels, out_channels, kernel_size=3, stride=1,
                                    norm_name="instance", act_name="relu")

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat([self.upsample(x), skip], dim=1))


class BressemUNet(nn.Module):
    """3D U-Net with an 18-layer 3D ResNet encoder (Bressem et al. 2021, arXiv:2101.09976).

    Encoder (MONAI ``ResNet``, basic blocks, layers 2-2-2-2): stem = 7x7x7 convolution stride 2 +
    batch norm + ReLU (skip 0, 1/2 resolution), max pooling, then four residual stages of two basic
    blocks each with ``features`` channels (skips 1-3 after stages 1-3 at 1/4, 1/8, 1/16; stage 4 at
    1/32).  Counted as ResNet counts layers: 1 stem convolution + 4 x 2 x 2 block convolutions +
    the classification layer (replaced here by the decoder) = 18.

    Decoder: a double convolution at the bottom, four upscaling blocks back to 1/2 resolution, one
    more transposed convolution to full resolution (the stem's stride 2 and the max pooling together
    halve the resolution five times), concatenation with the input, a final residual block and a
    1x1x1 convolution to ``out_channels``.

    The grey CT is replicated to ``in_channels`` (3, like the video-pretrained encoder expects)
    inside ``forward``: callers always give 1 channel (giving ``in_channels`` channels also works).
    ``widen_factor`` scales every width (1.0 = the paper's ResNet-18).

    Fidelity to the paper: Bressem et al. initialised the encoder with torchvision's Kinetics-400 ``r3d_18``.
    This encoder has the same depth, widths (64-128-256-512), basic blocks and stride-2 stages, but not
    r3d_18's stem: r3d_18 uses a (3, 7, 7) convolution with stride (1, 2, 2) and no max pooling (so it halves
    only in-plane at the stem), whereas MONAI's ResNet stem here is a 7x7x7 convolution with stride 2 in
    every axis followed by max pooling.  Kinetics weights therefore do not load into it; the weights that fit
    MONAI's ResNet-18 are MedicalNet's (Chen et al. 2019, 3D medical segmentation pretraining), loadable with
    ``strict=False`` into ``encoder``.  No pretrained encoder ships with this product: the shipped model is the
    compact residual U-Net, trained from scratch (see docs/model-card.md).
    """

    downsampling = 32

    def __init__(self, in_channels: int = 3, out_channels: int = 2, widen_factor: float = 1.0) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        widths = [int(f * widen_factor) for f in RESNET_FEATURES]  # as MONAI ResNet widens
        self.encoder = ResNet(
            block="basic", layers=list(RESNET18_LAYERS), block_inplanes=list(RESNET_FEATURES), spatial_dims=3,
            n_input_channels=self.in_channels, conv1_t_size=7, conv1_t_stride=2, shortcut_type="B",
            widen_factor=widen_factor, feed_forward=False, bias_downsample=False,
        )
        self.bottom = UnetBasicBlock(3, widths[3], widths[3], kernel_size=3, stride=1,
                                     norm_name="instance", act_name="relu")
        self.up = nn.ModuleList([
            _UpBlock(widths[3], widths[2], widths[2]),  # 1/32 -> 1/16, skip after stage 3
            _UpBlock(widths[2], widths[1], widths[1]),  # 1/16 -> 1/8, skip after stage 2
            _UpBlock(widths[1], widths[0], widths[0]),  # 1/8 -> 1/4, skip after stage 1
            _UpBlock(widths[0], widths[0], widths[0]),  # 1/4 -> 1/2, skip after the stem
        ])
        full = max(1, widths[0] // 2)
        self.to_full_resolution = Conv[Conv.CONVTRANS, 3](widths[0], full, kernel_size=2, stride=2, bias=False)
        self.final_block = UnetResBlock(3, full + self.in_channels, full, kernel_size=3, stride=1,
                                        norm_name="instance", act_name="relu")
        self.head = UnetOutBlock(3, full, out_channels)

    @property
    def residual_stages(self) -> list[nn.Sequential]:
        return [self.encoder.layer1, self.encoder.layer2, self.encoder.layer3, self.encoder.layer4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 and self.in_channels != 1:
            x = x.expand(-1, self.in_channels, *x.shape[2:])
        elif x.shape[1] != self.in_channels:
            raise ValueError(f"expected 1 or {self.in_channels} input channels, got {x.shape[1]}")
        x, spatial = _pad_to_multiple(x, self.downsampling)
        enc = self.encoder
        stem = enc.act(enc.bn1(enc.conv1(x)))
        s1 = enc.layer1(enc.maxpool(stem))
        s2 = enc.layer2(s1)
        s3 = enc.layer3(s2)
        y = self.bottom(enc.layer4(s3))
        for block, skip in zip(self.up, (s3, s2, s1, stem)):
            y = block(y, skip)
        y = self.final_block(torch.cat([self.to_full_resolution(y), x], dim=1))
        return _crop(self.head(y), spatial)


class CompactResUNet(nn.Module):
    """A compact residual 3D U-Net for CPU inference (MONAI ``UNet``, Kerfoot et al. 2018 residual units).

    Default: channels 16-32-64-128-128, four stride-2 levels, two residual units per level,
    instance norm; about 2.8 M parameters.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128, 128),
        num_res_units: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        self.in_channels = int(in_channels)
        self.downsampling = 2 ** (len(channels) - 1)
        self.unet = UNet(spatial_dims=3, in_channels=self.in_channels, out_channels=out_channels, channels=channels,
                         strides=(2,) * (len(channels) - 1), num_res_units=num_res_units, norm="instance",
                         dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, spatial = _pad_to_multiple(x, self.downsampling)
        return _crop(self.unet(x), spatial)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "bressem_resnet18_unet": BressemUNet,
    "compact_res_unet": CompactResUNet,
}
"""Registry names (``architecture`` in models.json) -> network constructors."""


def build_network(architecture: str, **kwargs: Any) -> nn.Module:
    """Build the network registered under ``architecture`` with constructor keyword arguments."""
    try:
        factory = ARCHITECTURES[architecture]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise InputError(f"unknown network architecture {architecture!r}; known: {known}") from None
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise InputError(f"bad settings for architecture {architecture!r}: {exc}") from None
