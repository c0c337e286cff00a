"""One ResNet18 for raw audio (1D) and time-frequency features (2D), with a width multiplier.

CLAR's premise (Sec. 3.2) is that the 1D and 2D models differ only in the dimension of
their operations: every convolution, pooling and batch norm is switched from 2D to 1D and
each kernel is "squared" (3x3 -> 9, 7x7 -> 49) so both models have about the same number
of parameters. Writing the network once, parameterised by ``dim``, keeps that premise true
by construction instead of by two copies drifting apart.

torchvision's ResNet cannot do this: its stage widths are fixed (64/128/256/512) and
``width_per_group`` raises for ``BasicBlock``, so a CPU-sized ResNet18 with base width 16
or 32 needs a ResNet of our own. At ``dim=2, base_width=64`` the module tree and parameter
names mirror torchvision's ``resnet18`` (without ``fc``), so its checkpoints load as is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_BATCH_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}
_MAX_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d}
_AVG_POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}


class BasicBlock(nn.Module):
    """Two ``kernel`` convolutions with a residual connection (He et al. 2016)."""

    expansion = 1

    def __init__(self, dim: int, in_channels: int, channels: int, stride: int, kernel: int) -> None:
        super().__init__()
        conv, norm = _CONV[dim], _BATCH_NORM[dim]
        padding = kernel // 2
        self.conv1 = conv(in_channels, channels, kernel, stride, padding, bias=False)
        self.bn1 = norm(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv(channels, channels, kernel, 1, padding, bias=False)
        self.bn2 = norm(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            # 1x1 projection shortcut; a 1-wide kernel squared is still 1.
            self.downsample = nn.Sequential(
                conv(in_channels, channels, 1, stride, bias=False), norm(channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet (BasicBlock) in 1D or 2D; ``forward`` returns the globally pooled features.

    Args:
        dim: 1 for raw audio ``(B, C, T)``, 2 for spectrograms ``(B, C, F, T)``.
        in_channels: input channels (1 for raw audio, 3 for CLAR's stacked features).
        base_width: channels of the first stage; stages use 1x, 2x, 4x, 8x of it.
        layers: blocks per stage (ResNet18: 2, 2, 2, 2).
        block_kernel, stem_kernel, pool_kernel: kernel sizes per dimension (2D: 3, 7, 3).
    """

    def __init__(
        self,
        dim: int,
        in_channels: int,
        base_width: int = 64,
        layers: Sequence[int] = (2, 2, 2, 2),
        block_kernel: int = 3,
        stem_kernel: int = 7,
        pool_kernel: int = 3,
    ) -> None:
        super().__init__()
        if dim not in _CONV:
            raise ValueError(f"ResNet dim must be 1 or 2, got {dim}")
        if base_width < 1 or in_channels < 1:
            raise ValueError(
                f"ResNet needs base_width >= 1 and in_channels >= 1, got {base_width}, "
                f"{in_channels}"
            )
        self.dim = dim
        self.conv1 = _CONV[dim](
            in_channels, base_width, stem_kernel, 2, stem_kernel // 2, bias=False
        )
        self.bn1 = _BATCH_NORM[dim](base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = _MAX_POOL[dim](pool_kernel, 2, pool_kernel // 2)
        channels_in = base_width
        stages = []
        for stage, blocks in enumerate(layers):
            channels = base_width * 2**stage
            stride = 1 if stage == 0 else 2
            stage_blocks = []
            for index in range(blocks):
                stage_blocks.append(
                    BasicBlock(
                        dim, channels_in, channels, stride if index == 0 else 1, block_kernel
                    )
                )
                channels_in = channels
            stages.append(nn.Sequential(*stage_blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = _AVG_POOL[dim](1)
        self.feature_dim = channels_in
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's ResNet initialisation, so 1D and 2D start from the same recipe.
        for module in self.modules():
            if isinstance(module, nn.Conv1d | nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def resnet18_2d(in_channels: int = 3, base_width: int = 64) -> ResNet:
    """ResNet18 on ``(B, C, F, T)`` features; at width 64 identical to torchvision's."""
    return ResNet(2, in_channels, base_width, block_kernel=3, stem_kernel=7, pool_kernel=3)


def resnet18_1d(in_channels: int = 1, base_width: int = 64, authors_code: bool = False) -> ResNet:
    """ResNet18 on raw audio ``(B, C, T)`` with CLAR's squared kernels.

    Paper (default): block kernel 9 (3x3), stem 49 (7x7), max-pool 9 (3x3). The authors'
    public code uses a stem kernel of 7 with the max-pool of 9; ``authors_code`` selects it.
    """
    stem_kernel = 7 if authors_code else 49
    return ResNet(
        1, in_channels, base_width, block_kernel=9, stem_kernel=stem_kernel, pool_kernel=9
    )
