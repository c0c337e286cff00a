"""Grad-CAM (QUACLRS 4.6, Figure 5): the layer it reads for every 2-D backbone is the
last convolutional map, 1-D encoders get none, and on a real recording the map of the
predicted class picks out parts of the spectrogram (it is not constant)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from torch import nn

from core.config import ModelConfig
from core.gradcam import first_clip_per_class, grad_cam, target_layer, trial_gradcam
from core.models import build_encoder
from core.sections import FrontendConfig

BACKBONES_2D = (
    "alexnet",
    "vgg16",
    "resnet18",
    "mobilenet_v2",
    "inception_v3",
    "efficientnet_b0",
    "convnext_tiny",
)


@pytest.mark.parametrize("name", BACKBONES_2D)
def test_the_target_layer_is_the_last_convolutional_map(name: str):
    """Random weights (nothing downloaded), a small input: no convolution runs after the
    target layer's output is made, and that output is the map the features pool."""
    width = 8 if name == "resnet18" else 64  # the others keep torchvision's widths
    encoder = build_encoder(ModelConfig(encoder=name, width=width), in_channels=3).eval()
    layer = target_layer(encoder)
    assert layer is not None
    convs_run = [0]
    seen: dict[str, object] = {}

    def count(*_):
        convs_run[0] += 1

    def keep(_module, _args, output):
        seen["convs_before"], seen["output"] = convs_run[0], output

    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    handles = [conv.register_forward_hook(count) for conv in convs]
    handles.append(layer.register_forward_hook(keep))
    with torch.no_grad():
        encoder(torch.randn(2, 3, 64, 64))
    for handle in handles:
        handle.remove()
    assert seen["convs_before"] == convs_run[0] > 0, "a convolution runs after the target"
    output = seen["output"]
    assert output.dim() == 4 and output.shape[:2] == (2, encoder.feature_dim)


def test_one_dimensional_encoders_get_no_gradcam():
    encoder = build_encoder(ModelConfig(encoder="resnet18_1d", width=4), in_channels=1)
    assert target_layer(encoder) is None
    assert target_layer(nn.Linear(4, 2)) is None  # not an encoder of ours: no map known


def test_the_clips_are_the_first_of_each_class_in_class_order():
    targets = np.array([2, 0, 2, 1, 0, 5])
    assert first_clip_per_class(targets).tolist() == [1, 3, 0, 5]
    assert first_clip_per_class(targets, limit=2).tolist() == [1, 3]


class RecordingsCache:
    """The part of an AudioCache Grad-CAM reads, over a few real FSDD recordings."""

    def __init__(self, paths: list[Path], samples: int) -> None:
        waves = []
        for path in paths:
            audio, _ = soundfile.read(path, dtype="float32")
            waves.append(np.pad(audio[:samples], (0, max(0, samples - len(audio)))))
        self.audio = torch.from_numpy(np.stack(waves))
        self.labels = np.array([int(path.name.split("_")[0]) for path in paths])
        self.class_names = [str(digit) for digit in range(10)]

    def batch(self, rows: np.ndarray) -> torch.Tensor:
        return self.audio[torch.as_tensor(rows)]


class Classifier(nn.Module):
    """An encoder and a linear classifier: what ``EvaluationResult.logits_of`` wraps."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, 10)

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(spectrogram))


def test_the_map_of_a_real_recording_is_not_constant(fsdd_root: Path):
    from core.evaluate import EvaluationResult
    from core.features import build_frontend

    paths = [fsdd_root / "recordings" / f"{digit}_jackson_0.wav" for digit in (3, 7, 1)]
    cache = RecordingsCache(paths, samples=8000)
    frontend = build_frontend(FrontendConfig(name="stft3"), 8000)
    torch.manual_seed(0)
    model = Classifier(build_encoder(ModelConfig(encoder="resnet18", width=8), in_channels=3))
    model.train()
    rows = np.arange(3)
    result = EvaluationResult(0.0, 0.0, [0.0] * 10, np.zeros((10, 10)), cache.class_names)
    result.rows, result.targets, result.logits_of = rows, cache.labels, model
    maps = trial_gradcam(model, frontend, cache, result, torch.device("cpu"))
    assert model.training, "Grad-CAM hands the network back in training mode"
    assert all(p.grad is None for p in model.parameters()), "no parameter gradient is left"
    assert maps is not None and maps.layer == "trunk.layer4"
    assert maps.true == ["1", "3", "7"]  # class order: rows 2, 0, 1
    assert maps.rows.tolist() == [2, 0, 1]
    spectrogram_shape = frontend(cache.batch(rows[:1])).shape[-2:]
    assert maps.maps.shape == maps.images.shape == (3, *spectrogram_shape)
    for heat in maps.maps:
        assert heat.max() == pytest.approx(1.0) and heat.min() >= 0.0
        assert heat.std() > 0.05, "a constant map explains nothing"
    model.eval()
    with torch.no_grad():
        inputs = frontend(cache.batch(maps.rows))
        expected = model(inputs).argmax(dim=1)
    assert maps.predicted == [str(int(k)) for k in expected]
    # The same maps from the function Grad-CAM is built on, on a batch of one: the clips
    # of a batch do not interact in eval mode.
    single, _, size = grad_cam(model, model.encoder.trunk.layer4, inputs[:1])
    assert size == maps.map_size and min(size) > 1
    np.testing.assert_allclose(single[0].numpy(), maps.maps[0], atol=1e-4)
