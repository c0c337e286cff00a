"""Encoders: input checks, global pooling and a known feature width around each backbone.

Every encoder maps a batch to ``(B, feature_dim)``; the heads read ``feature_dim`` so that
any backbone can sit under any method. The QUACLRS backbones come from torchvision with
random initialisation. Only their convolutional trunks are kept: AlexNet's and VGG16's
fully connected classifiers hold 58 M and 120 M parameters that an SSL encoder does not
need (the heads replace them), so their features are the globally pooled last conv map.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.models.resnet import ResNet, resnet18_1d, resnet18_2d

# Smallest spatial size (both axes) each torchvision trunk accepts: below it a pooling
# stage would produce an empty map. Short clips or few mel bins are upsampled to it.
MIN_INPUT_SIZE = {
    "alexnet": 63,
    "vgg16": 32,
    "mobilenet_v2": 32,
    "efficientnet_b0": 32,
    "convnext_tiny": 32,
    "inception_v3": 75,
}


class Encoder(nn.Module):
    """A backbone plus the shape contract the heads and methods rely on.

    ``forward(x) -> (B, feature_dim)``. 1D encoders take ``(B, T)`` or ``(B, C, T)``;
    2D encoders take ``(B, C, F, T)`` (or ``(B, F, T)`` when ``in_channels == 1``).
    """

    def __init__(
        self,
        trunk: nn.Module,
        feature_dim: int,
        dim: int,
        in_channels: int,
        name: str,
        min_size: int = 1,
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.feature_dim = feature_dim
        self.dim = dim
        self.in_channels = in_channels
        self.name = name
        self.min_size = min_size

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == self.dim + 1 and self.in_channels == 1:
            x = x.unsqueeze(1)
        if x.dim() != self.dim + 2 or x.shape[1] != self.in_channels:
            layout = "(B, C, T)" if self.dim == 1 else "(B, C, F, T)"
            raise ValueError(
                f"encoder {self.name!r} expects {layout} with C={self.in_channels}, got shape "
                f"{tuple(x.shape)}; check that frontend.name/channels match model.encoder"
            )
        if self.dim == 2 and min(x.shape[-2:]) < self.min_size:
            size = (max(x.shape[-2], self.min_size), max(x.shape[-1], self.min_size))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.trunk(x)


class _PooledTrunk(nn.Module):
    """``features`` then global average pooling (plus an optional norm) to a vector."""

    def __init__(self, features: nn.Module, post_pool: nn.Module | None = None) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.post_pool = post_pool if post_pool is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.post_pool(self.pool(self.features(x))), 1)


def load_local_weights(model: nn.Module, path: Path, name: str, drop_prefixes=()) -> None:
    """Load a state dict from a local file; nothing is ever downloaded.

    Accepts a bare state dict or a checkpoint holding one under ``state_dict``/``model``.
    Keys starting with ``drop_prefixes`` (classifier layers we replace) are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model.pretrained={str(path)!r} for encoder {name!r} is not a file. Weights are "
            f"only read from local files (no downloads): save the torchvision state_dict "
            f"with torch.save(model.state_dict(), path) on a machine that has it, or set "
            f"model.pretrained to null for random initialisation"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    state = {k: v for k, v in state.items() if not k.startswith(tuple(drop_prefixes))}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"model.pretrained={str(path)!r} does not fit encoder {name!r}: {error}"
        ) from None


def adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Replace the first convolution so it takes ``in_channels`` instead of 3.

    Its new weights are the mean of the old ones over input channels, repeated: for
    pretrained weights this keeps the response to a constant input unchanged.
    """
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return
            new = nn.Conv2d(
                in_channels,
                module.out_channels,
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                module.groups,
                module.bias is not None,
            )
            with torch.no_grad():
                mean = module.weight.mean(dim=1, keepdim=True)
                new.weight.copy_(mean.expand(-1, in_channels, -1, -1) * 3 / in_channels)
                if module.bias is not None:
                    new.bias.copy_(module.bias)
            parent_name, _, child = module_name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, new)
            return
    raise ValueError(f"{type(model).__name__} has no Conv2d to adapt")


def _torchvision(name: str, in_channels: int, pretrained: Path | None) -> Encoder:
    """A torchvision backbone's trunk, random init unless ``pretrained`` is a local file."""
    # Imported here, not at the top: torchvision takes a second to import, and every
    # fresh training worker process imports this module whatever encoder it builds.
    import torchvision.models as tvm

    if name == "inception_v3":
        # torchvision's ImageNet weights for Inception-v3 were trained on inputs scaled to
        # [-1, 1]; tvm.inception_v3(weights=...) sets transform_input=True so that inputs
        # normalised with ImageNet's mean and std are rescaled to that range. We load the
        # same weights from a local file, so we set it the same way. It rescales three
        # channels, so it applies to 3-channel inputs only (other counts adapt conv1).
        transform_input = pretrained is not None and in_channels == 3
        net = tvm.inception_v3(
            weights=None, aux_logits=False, init_weights=True, transform_input=transform_input
        )
    else:
        net = getattr(tvm, name)(weights=None)
    if pretrained is not None:
        # inception_v3 checkpoints carry the auxiliary classifier we build without.
        load_local_weights(net, pretrained, name, drop_prefixes=("AuxLogits.",))
    if in_channels != 3:
        adapt_first_conv(net, in_channels)
    if name == "inception_v3":
        net.fc = nn.Identity()
        net.dropout = nn.Identity()
        trunk: nn.Module = net
        feature_dim = 2048
    elif name == "convnext_tiny":
        trunk = _PooledTrunk(net.features, post_pool=net.classifier[0])  # LayerNorm2d
        feature_dim = net.classifier[2].in_features
    else:
        trunk = _PooledTrunk(net.features)
        feature_dim = {"alexnet": 256, "vgg16": 512}.get(name) or net.classifier[-1].in_features
    return Encoder(trunk, feature_dim, 2, in_channels, name, MIN_INPUT_SIZE[name])


def _resnet_encoder(net: ResNet, name: str, in_channels: int, pretrained: Path | None):
    if pretrained is not None:
        # torchvision resnet18 checkpoints (width 64) fit our 2D ResNet once fc is dropped.
        load_local_weights(net, pretrained, name, drop_prefixes=("fc.",))
    return Encoder(net, net.feature_dim, net.dim, in_channels, name)


def build_resnet18(width: int, in_channels: int, pretrained: Path | None, **_) -> Encoder:
    return _resnet_encoder(resnet18_2d(in_channels, width), "resnet18", in_channels, pretrained)


def build_resnet18_1d(
    width: int, in_channels: int, pretrained: Path | None, authors_code: bool = False, **_
) -> Encoder:
    net = resnet18_1d(in_channels, width, authors_code=authors_code)
    return _resnet_encoder(net, "resnet18_1d", in_channels, pretrained)


def _torchvision_builder(name: str) -> Callable[..., Encoder]:
    def build(width: int, in_channels: int, pretrained: Path | None, **_) -> Encoder:
        return _torchvision(name, in_channels, pretrained)

    build.__name__ = f"build_{name}"
    build.__doc__ = f"torchvision {name} trunk, globally pooled (model.width does not apply)."
    return build


# The QUACLRS backbones, by the names core.registry's ENCODERS points at.
build_alexnet = _torchvision_builder("alexnet")
build_vgg16 = _torchvision_builder("vgg16")
build_mobilenet_v2 = _torchvision_builder("mobilenet_v2")
build_efficientnet_b0 = _torchvision_builder("efficientnet_b0")
build_convnext_tiny = _torchvision_builder("convnext_tiny")
build_inception_v3 = _torchvision_builder("inception_v3")
