"""ImageNet weights for the QUACLRS backbones: found in a local folder or torchvision's
cache, loaded into the encoder, and a clear error naming the expected file otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision.models as tvm

from ablations import run_backbones
from core.config import ConfigError, ExperimentConfig, ModelConfig
from core.imagenet import IMAGENET_CHECKPOINTS, imagenet_checkpoint
from core.models import build_encoder


def test_file_names_are_torchvisions() -> None:
    for name, file in IMAGENET_CHECKPOINTS.items():
        assert tvm.get_model_weights(name).IMAGENET1K_V1.url.rsplit("/", 1)[1] == file


def test_missing_weights_name_every_place_looked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(FileNotFoundError) as error:
        imagenet_checkpoint("mobilenet_v2", tmp_path / "weights")
    text = str(error.value)
    assert str(tmp_path / "weights" / "mobilenet_v2-b0353104.pth") in text
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth") in text


def test_weights_from_torchvisions_cache_are_loaded(tmp_path: Path, monkeypatch) -> None:
    """A checkpoint where torchvision keeps its downloads ends up in the encoder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(3)
    reference = tvm.mobilenet_v2(weights=None)
    torch.save(reference.state_dict(), folder / IMAGENET_CHECKPOINTS["mobilenet_v2"])
    encoder = build_encoder(ModelConfig(encoder="mobilenet_v2", weights="imagenet"), 3)
    first = reference.features[0][0].weight
    assert torch.equal(encoder.trunk.features[0][0].weight, first)


def test_config_refuses_what_has_no_imagenet_weights() -> None:
    with pytest.raises(ConfigError, match="no ImageNet weights for 'resnet18_1d'"):
        ExperimentConfig.from_dict(
            {"frontend": {"name": "raw1d"}, "model": {"encoder": "resnet18_1d",
                                                      "weights": "imagenet"}}  # fmt: skip
        )
    with pytest.raises(ConfigError, match="needs model.width=64"):
        ExperimentConfig.from_dict({"model": {"width": 16, "weights": "imagenet"}})


def test_pretrained_backbones_fail_before_anything_runs(
    tmp_path: Path, monkeypatch, capsys, fsdd_root
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    code = run_backbones.main(
        ["--dry-run", "--encoders", "efficientnet_b0", "--folds", "1"]  # Table 2: pretrained
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "efficientnet_b0_rwightman-7f5810bc.pth" in err and str(tmp_path) in err
