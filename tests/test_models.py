"""Encoders and heads: the 1D/2D ResNet18 premise, torchvision parity, shapes, bad input."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from core.config import ConfigError, ExperimentConfig, ModelConfig
from core.models import ENCODERS, EvaluationHead, ProjectionHead, build_encoder, count_parameters
from core.models.backbones import MIN_INPUT_SIZE


@pytest.mark.parametrize("width", [16, 64])
@pytest.mark.parametrize("authors_code", [False, True])
def test_resnet18_1d_and_2d_have_parameter_counts_within_5_percent(width, authors_code):
    one_d = build_encoder(
        ModelConfig(encoder="resnet18_1d", width=width, authors_code=authors_code), 1
    )
    two_d = build_encoder(ModelConfig(encoder="resnet18", width=width), 3)
    ratio = count_parameters(one_d) / count_parameters(two_d)
    assert abs(ratio - 1) < 0.05, ratio
    assert one_d.feature_dim == two_d.feature_dim == 8 * width


def test_resnet18_1d_kernels_follow_the_paper_and_the_authors_code():
    paper = build_encoder(ModelConfig(encoder="resnet18_1d", width=8), 1).trunk
    authors = build_encoder(ModelConfig(encoder="resnet18_1d", width=8, authors_code=True), 1)
    assert paper.conv1.kernel_size == (49,)
    assert paper.maxpool.kernel_size == 9
    assert paper.layer1[0].conv1.kernel_size == (9,)
    assert authors.trunk.conv1.kernel_size == (7,)
    assert authors.trunk.maxpool.kernel_size == 9


def test_resnet18_at_width_64_is_torchvisions_resnet18(tmp_path):
    reference = torchvision.models.resnet18(weights=None).eval()
    checkpoint = tmp_path / "resnet18.pt"
    torch.save(reference.state_dict(), checkpoint)  # a local "pretrained" file, fc included
    ours = build_encoder(ModelConfig(encoder="resnet18", pretrained=checkpoint), 3).eval()
    reference.fc = nn.Identity()
    assert count_parameters(ours) == count_parameters(reference)
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-5)


def test_inception_v3_with_imagenet_weights_rescales_its_input_as_torchvision_does(tmp_path):
    """torchvision builds Inception-v3 with transform_input=True when it loads the ImageNet
    weights (they were trained on inputs in [-1, 1]); loaded from a local file, ours must
    do the same, and a randomly initialised one must not. The features then equal
    torchvision's own model with those weights, on the same input."""
    reference = torchvision.models.inception_v3(
        weights=None, aux_logits=True, init_weights=True, transform_input=True
    ).eval()
    checkpoint = tmp_path / "inception_v3.pt"
    torch.save(reference.state_dict(), checkpoint)  # as saved from weights=IMAGENET1K_V1
    config = ModelConfig(encoder="inception_v3", pretrained=checkpoint)
    ours = build_encoder(config, 3).eval()
    assert ours.trunk.transform_input is True
    assert build_encoder(ModelConfig(encoder="inception_v3"), 3).trunk.transform_input is False
    reference.fc = nn.Identity()
    image = torch.randn(2, 3, 299, 299)
    with torch.no_grad():
        torch.testing.assert_close(ours(image), reference(image), rtol=1e-4, atol=1e-4)


def test_width_multiplier_scales_parameters_quadratically():
    small = count_parameters(build_encoder(ModelConfig(encoder="resnet18", width=16), 3))
    large = count_parameters(build_encoder(ModelConfig(encoder="resnet18", width=32), 3))
    assert 3.9 < large / small < 4.1


def test_1d_encoder_accepts_raw_audio_layouts_and_rejects_others():
    encoder = build_encoder(ModelConfig(encoder="resnet18_1d", width=8), 1)
    audio = torch.randn(3, 4000)
    assert encoder(audio).shape == (3, 64)
    assert encoder(audio.unsqueeze(1)).shape == (3, 64)
    with pytest.raises(ValueError, match="resnet18_1d.*expects"):
        encoder(torch.randn(3, 3, 40, 50))


@pytest.mark.parametrize("name", [n for n in ENCODERS if n not in ("resnet18", "resnet18_1d")])
def test_torchvision_backbones_pool_to_their_feature_width(name):
    encoder = build_encoder(ModelConfig(encoder=name), 3).eval()
    # 20 x 30 is below every trunk's minimum: the encoder upsamples instead of failing.
    with torch.no_grad():
        features = encoder(torch.randn(2, 3, 20, 30))
    assert features.shape == (2, encoder.feature_dim)
    assert torch.isfinite(features).all()
    assert MIN_INPUT_SIZE[name] > 20


def test_single_channel_input_adapts_the_first_convolution():
    encoder = build_encoder(ModelConfig(encoder="mobilenet_v2"), 1).eval()
    with torch.no_grad():
        assert encoder(torch.randn(2, 1, 40, 40)).shape == (2, 1280)
        assert encoder(torch.randn(2, 40, 40)).shape == (2, 1280)  # (B, F, T)


def test_pretrained_only_reads_local_files(tmp_path):
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(FileNotFoundError, match="no downloads"):
        build_encoder(ModelConfig(encoder="alexnet", pretrained=missing), 3)
    wrong = tmp_path / "wrong.pt"
    torch.save(nn.Linear(2, 2).state_dict(), wrong)
    with pytest.raises(ValueError, match="does not fit encoder 'resnet18'"):
        build_encoder(ModelConfig(encoder="resnet18", pretrained=wrong), 3)


def test_width_is_reported_as_ignored_for_fixed_width_backbones():
    with pytest.warns(UserWarning, match="model.width=16 only applies"):
        build_encoder(ModelConfig(encoder="alexnet", width=16), 3)


def test_heads_are_three_linear_layers_with_relu():
    head = ProjectionHead(512, 256, 128)
    kinds = [type(layer) for layer in head.layers]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert head(torch.randn(4, 512)).shape == (4, 128)
    evaluation = EvaluationHead(512, 256, 10)
    assert [type(layer) for layer in evaluation.layers] == kinds
    assert evaluation(torch.randn(4, 512)).shape == (4, 10)


def test_linear_evaluation_head_is_one_linear_layer():
    from core.models.heads import build_evaluation_head

    probe = build_evaluation_head(ModelConfig(eval_head="linear").eval_head, 512, 256, 10)
    assert type(probe) is nn.Linear and (probe.in_features, probe.out_features) == (512, 10)
    assert sum(1 for m in probe.modules() if isinstance(m, nn.Linear)) == 1
    mlp = build_evaluation_head(ModelConfig().eval_head, 512, 256, 10)
    assert isinstance(mlp, EvaluationHead)
    assert sum(1 for m in mlp.modules() if isinstance(m, nn.Linear)) == 3
    with pytest.raises(ConfigError, match="model.eval_head"):
        ExperimentConfig.from_dict({"model": {"eval_head": "svm"}})


def test_config_names_the_bad_encoder_and_incompatible_front_end():
    with pytest.raises(ConfigError, match="unknown encoder 'resnet50'; valid: alexnet"):
        ExperimentConfig.from_dict({"model": {"encoder": "resnet50"}})
    with pytest.raises(ConfigError, match="model.encoder='resnet18_1d' is 1D"):
        ExperimentConfig.from_dict({"model": {"encoder": "resnet18_1d"}})
    with pytest.raises(ConfigError, match="model.proj_dim"):
        ExperimentConfig.from_dict({"model": {"proj_dim": 0}})
