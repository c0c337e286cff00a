"""Grad-CAM (Selvaraju et al. 2017) for the 2-D encoders: where in a spectrogram the
scored classifier found the class it predicted (QUACLRS 4.6 and Figure 5).

The gradients of the predicted class's logit with respect to the encoder's last
convolutional feature map, averaged over the map, weigh its channels; the ReLU of the
weighted sum, upsampled to the input, is the class activation map.

Written here rather than taken from the ``grad-cam`` package: that package pulls OpenCV
(a large binary wheel, for resizing and colouring that ``F.interpolate`` and matplotlib
already do), and it wraps a model whose forward returns logits, where the classifier we
score is the encoder followed by either the method's own head or the standardised
evaluation head (:attr:`core.evaluate.EvaluationResult.logits_of`). The method is a
forward hook and one ``torch.autograd.grad`` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.models.resnet import ResNet

# Test clips explained per trial: one per class, in class order, at most this many.
MAX_CLIPS = 8


@dataclass
class GradCamMaps:
    """Grad-CAM of a few test clips: each input's first channel and its map in [0, 1]."""

    images: np.ndarray  # (clips, F, T): the front end's output, first channel
    maps: np.ndarray  # (clips, F, T): the predicted class's activation map, peak 1
    true: list[str]
    predicted: list[str]
    rows: np.ndarray  # the clips' cache rows
    layer: str  # the encoder layer the maps were taken at
    map_size: tuple[int, int] = (0, 0)  # that layer's spatial size (1x1: constant maps)


def target_layer(encoder: nn.Module) -> nn.Module | None:
    """The module whose output is ``encoder``'s last convolutional feature map; None for
    a 1-D encoder (raw waveform) or one of unknown layout, which get no Grad-CAM.

    One place for every backbone: the project's ResNet18 and torchvision's ResNet-style
    trunks end in ``layer4``; Inception-v3 in ``Mixed_7c``; the others keep their
    convolutions in ``features``, whose last block is the map, except that AlexNet and
    VGG16 end it with a max pool: the map before it (VGG16's ``relu5_3``, Selvaraju et
    al.'s choice) has twice its resolution."""
    if getattr(encoder, "dim", None) != 2:
        return None
    trunk = getattr(encoder, "trunk", None)
    if isinstance(trunk, ResNet):
        return trunk.layer4
    if hasattr(trunk, "Mixed_7c"):
        return trunk.Mixed_7c
    features = getattr(trunk, "features", None)
    if isinstance(features, nn.Sequential):
        layers = list(features)
        while layers and isinstance(layers[-1], nn.MaxPool2d):
            layers.pop()
        return layers[-1] if layers else None
    return None


def grad_cam(
    logits_of: Callable[[torch.Tensor], torch.Tensor], layer: nn.Module, inputs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Each input's activation map of its predicted class, ``(B, F, T)`` scaled to peak 1
    (all zeros where no location speaks for the class), that class ``(B,)``, and the
    spatial size of ``layer``'s map (a 1x1 map, a small input through a deep trunk, makes
    every map constant).

    ``logits_of`` maps ``inputs`` to logits through a network containing ``layer``; it
    should be in eval mode, so that the clips of a batch do not interact. The gradients
    come from ``torch.autograd.grad``: no parameter's ``.grad`` is touched."""
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _module, _args, output: captured.append(output))
    try:
        with torch.enable_grad():
            # Through the input, the map needs a gradient even when the encoder is frozen.
            logits = logits_of(inputs.detach().float().requires_grad_(True))
            predicted = logits.argmax(dim=1)
            chosen = logits.gather(1, predicted[:, None]).sum()
            activation = captured[-1]
            (gradient,) = torch.autograd.grad(chosen, activation)
    finally:
        handle.remove()
    weights = gradient.float().mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation.detach().float()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    height, width = activation.shape[-2:]
    return cam / peak, predicted, (int(height), int(width))


def first_clip_per_class(targets: np.ndarray, limit: int = MAX_CLIPS) -> np.ndarray:
    """Positions of the first clip of each class present in ``targets`` (in class order),
    at most ``limit``: the same clips for every trial scored on the same split."""
    _, first = np.unique(np.asarray(targets), return_index=True)  # classes sorted
    return first[:limit]


def trial_gradcam(
    method: nn.Module, frontend: nn.Module, cache: Any, result: Any, device: torch.device
) -> GradCamMaps | None:
    """Grad-CAM of a few of ``result``'s clips through the classifier that scored them
    (``result.logits_of``, whose encoder is ``method.encoder``); None for an encoder
    without a 2-D feature map or a result that kept no classifier or clips.

    ``cache`` is the trial's :class:`~core.data.cache.AudioCache` and ``result`` an
    :class:`~core.evaluate.EvaluationResult` of it."""
    layer = target_layer(method.encoder)
    if layer is None or result.logits_of is None or result.rows is None or not len(result.rows):
        return None
    picked = first_clip_per_class(result.targets)
    rows = np.asarray(result.rows)[picked]
    was_training = method.training
    method.eval()
    try:
        with torch.no_grad():
            inputs = frontend(cache.batch(rows).to(device)).float()
        if inputs.dim() == 3:  # (B, F, T): a one-channel front end
            inputs = inputs.unsqueeze(1)
        maps, predicted, map_size = grad_cam(result.logits_of, layer, inputs)
    finally:
        method.train(was_training)
    names = result.class_names
    layer_name = next(
        (name for name, module in method.encoder.named_modules() if module is layer), "?"
    )
    return GradCamMaps(
        images=inputs[:, 0].cpu().numpy(),
        maps=maps.cpu().numpy(),
        true=[names[int(k)] for k in np.asarray(result.targets)[picked]],
        predicted=[names[int(k)] for k in predicted.cpu()],
        rows=rows,
        layer=layer_name,
        map_size=map_size,
    )
