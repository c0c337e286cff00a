"""Every method overfits real FSDD clips; state, momentum updates and bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from pydantic import Field

from core.config import ConfigError, ExperimentConfig
from core.methods import (
    METHODS,
    Method,
    MethodConfig,
    build_method,
    method_config_class,
    register_method,
    unregister_method,
)
from core.models import build_encoder
from core.optim import build_optimizer

CLIPS = 64
SAMPLES = 4000  # 0.5 s at FSDD's 8 kHz


# Small settings for a CPU test, each applied to the methods that have the field. The
# heads' published sizes (Barlow Twins' three 8192 layers, BYOL's 4096, DINO's 2048) would
# make the overfitting test 20x slower; their shapes are tested in test_method_heads.py.
SMALL_METHOD_SETTINGS = {
    "queue_size": 128,
    "out_dim": 64,
    "prototypes": 16,
    "temperature": 0.2,
    "projector_hidden_dim": 64,
    "projector_dim": 32,
    "predictor_hidden_dim": 64,
    "head_hidden_dim": 64,
    "bottleneck_dim": 32,
}


def _config(method: str, **method_fields) -> ExperimentConfig:
    fields = method_config_class(method).model_fields
    small = {key: value for key, value in SMALL_METHOD_SETTINGS.items() if key in fields}
    return ExperimentConfig.from_dict(
        {
            "model": {"encoder": "resnet18", "width": 8, "proj_hidden_dim": 64, "proj_dim": 32},
            "method": {"name": method, **small, **method_fields},
            "optim": {"name": "adam", "lr": 2e-3, "weight_decay": 0.0, "warmup_epochs": 0},
            "train": {"batch_size": CLIPS},
        }
    )


@pytest.fixture(scope="module")
def fsdd_views(fsdd_root: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two log-mel views of 64 real clips (random shift + noise), and their digit labels."""
    files = sorted((fsdd_root / "recordings").glob("*.wav"))[:: 3000 // CLIPS][:CLIPS]
    audio = np.zeros((CLIPS, SAMPLES), dtype=np.float32)
    labels = []
    for row, path in enumerate(files):
        signal, rate = sf.read(path, dtype="float32", always_2d=True)
        assert rate == 8000, path
        signal = signal.mean(axis=1)[:SAMPLES]
        audio[row, : len(signal)] = signal
        labels.append(int(path.name.split("_")[0]))
    audio_t = torch.from_numpy(audio)
    generator = torch.Generator().manual_seed(0)
    mel = torchaudio.transforms.MelSpectrogram(8000, n_fft=256, hop_length=256, n_mels=32)

    def view() -> torch.Tensor:
        shifts = torch.randint(0, 800, (CLIPS, 1), generator=generator)
        index = (torch.arange(SAMPLES) - shifts) % SAMPLES  # per-clip circular shift
        shifted = audio_t.gather(1, index)
        noisy = shifted + 0.01 * torch.randn(shifted.shape, generator=generator)
        return torch.log(mel(noisy) + 1e-6).unsqueeze(1)  # (B, 1, 32, 16)

    return view(), view(), torch.tensor(labels)


@pytest.mark.parametrize("name", sorted(n for n in METHODS if METHODS[n].config.trains))
def test_each_method_loss_drops_when_overfitting_real_clips(fsdd_views, name):
    view1, view2, labels = fsdd_views
    torch.manual_seed(0)
    # DINO's loss is a moving target (EMA teacher and center); with the teacher and the
    # center held at their initial values the student has a fixed target to fit.
    frozen_teacher = {"momentum": 1.0, "center_momentum": 1.0}
    cfg = _config(name, **frozen_teacher) if name == "dino" else _config(name)
    method = build_method(cfg, build_encoder(cfg.model, 1), num_classes=10)
    optimizer = build_optimizer(cfg.optim, method)
    steps, history = 24, []
    for step in range(steps):
        out = method(view1, view2, labels)
        assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
        # What a space file may rank by is declared beside the config (core.metrics).
        assert set(out) == set(type(cfg.method).reported), name
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        method.on_after_optimizer_step(step / steps)
        history.append(out["loss"].item())
    # MoCo's first steps see a random queue; its loss is comparable once the queue holds
    # real keys (K / B = 2 steps).
    start = 2 if name.startswith("moco") else 0
    first, last = np.mean(history[start : start + 3]), np.mean(history[-3:])
    assert last < 0.9 * first, (name, history)


def test_state_dict_saves_queues_momentum_encoders_and_centers():
    for name, expected in (
        ("moco", {"queue", "queue_pointer", "momentum_encoder.trunk.conv1.weight"}),
        ("byol", {"target_encoder.trunk.conv1.weight", "predictor.0.weight"}),
        ("dino", {"center", "teacher_head.last_layer.parametrizations.weight.original1"}),
        ("swav", {"prototypes.weight"}),
    ):
        cfg = _config(name)
        method = build_method(cfg, build_encoder(cfg.model, 1), num_classes=10)
        assert expected <= set(method.state_dict()), name


def test_moco_enqueues_keys_in_training_only_and_ema_moves_the_key_encoder():
    cfg = _config("moco", momentum=0.5)
    method = build_method(cfg, build_encoder(cfg.model, 1), num_classes=10)
    views = torch.randn(2, 8, 1, 32, 32)
    before = method.queue.clone()
    out = method(views[0], views[1], torch.full((8,), -1))
    assert method.queue_pointer.item() == 8
    assert not torch.equal(method.queue[:8], before[:8])
    assert torch.equal(method.queue[8:], before[8:])
    assert torch.allclose(method.queue[:8].norm(dim=1), torch.ones(8), atol=1e-5)
    method.eval()
    method(views[0], views[1], torch.full((8,), -1))
    assert method.queue_pointer.item() == 8
    method.train()
    out["loss"].backward()
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(1.0)
    key_weight = method.momentum_encoder.trunk.conv1.weight.clone()
    online_weight = method.encoder.trunk.conv1.weight
    method.on_after_optimizer_step(0.0)
    expected = 0.5 * key_weight + 0.5 * online_weight
    assert torch.allclose(method.momentum_encoder.trunk.conv1.weight, expected)
    assert not any(p.requires_grad for p in method.momentum_encoder.parameters())


def test_supervised_and_clar_with_an_unlabelled_batch_do_not_nan():
    views = torch.randn(2, 4, 1, 32, 32)
    for name in ("supervised", "clar"):
        cfg = _config(name)
        method = build_method(cfg, build_encoder(cfg.model, 1), num_classes=10)
        out = method(views[0], views[1], torch.full((4,), -1))
        assert torch.isfinite(out["loss"])
        assert out["ce"].item() == 0.0


def test_class_weights_come_from_the_training_counts():
    cfg = _config("supervised", class_weights=True)
    encoder = build_encoder(cfg.model, 1)
    with pytest.raises(ValueError, match="needs the training set's class_counts"):
        build_method(cfg, encoder, num_classes=3)
    method = build_method(cfg, encoder, num_classes=3, class_counts=np.array([10, 20, 30]))
    assert torch.allclose(method.class_weights, torch.tensor([2.0, 1.0, 2 / 3]))


def test_config_rejects_bad_method_settings_naming_the_fields():
    with pytest.raises(ConfigError, match="unknown method 'simsiam'; valid: barlow_twins"):
        ExperimentConfig.from_dict({"method": {"name": "simsiam"}})
    with pytest.raises(ConfigError, match="method.temperature: Input should be greater than 0"):
        ExperimentConfig.from_dict({"method": {"temperature": 0}})
    with pytest.raises(ConfigError, match="method.queue_size=1000 must be a multiple"):
        ExperimentConfig.from_dict(
            {"method": {"name": "moco", "queue_size": 1000}, "train": {"batch_size": 64}}
        )
    with pytest.raises(ConfigError, match="method.class_weights=true"):
        ExperimentConfig.from_dict({"method": {"name": "simclr", "class_weights": True}})


def test_dino_center_follows_the_teacher_output_in_training():
    cfg = _config("dino", center_momentum=0.5)
    method = build_method(cfg, build_encoder(cfg.model, 1), num_classes=10)
    views = torch.randn(2, 8, 1, 32, 16)
    method(views[0], views[1], torch.full((8,), -1))
    with torch.no_grad():
        teacher = method.teacher_head(method.teacher_encoder(torch.cat([views[0], views[1]])))
    # BN in train mode: the same batch gives the same teacher output, so the center is
    # half of its mean (momentum 0.5 from 0).
    assert torch.allclose(method.center, 0.5 * teacher.mean(dim=0, keepdim=True), atol=1e-5)


def test_each_method_gets_its_published_defaults_without_any_setting():
    published = {
        "simclr": {"temperature": 0.5},
        "clar": {"temperature": 0.5, "ce_weight": 1.0},
        "moco": {"temperature": 0.07, "momentum": 0.999, "queue_size": 65_536},
        "mocov2": {"temperature": 0.2, "momentum": 0.999, "queue_size": 65_536},
        "byol": {"momentum": 0.996},
        "barlow_twins": {"lambda_offdiag": 5e-3},
        "dino": {"teacher_temperature": 0.04, "student_temperature": 0.1, "momentum": 0.996},
        "swav": {"temperature": 0.1, "epsilon": 0.05, "sinkhorn_iterations": 3},
    }
    for name, values in published.items():
        method = ExperimentConfig.from_dict({"method": {"name": name}}).method
        assert {key: getattr(method, key) for key in values} == values, name
    labelled = {name for name in METHODS if METHODS[name].config.uses_labels}
    assert labelled == {"supervised", "clar", "linear_probe"}


def test_a_field_the_method_does_not_have_lists_the_fields_it_has():
    with pytest.raises(
        ConfigError,
        match=r"method 'byol' has no field\(s\) temperature; its "
        r"fields: name, class_weights, momentum",
    ):
        ExperimentConfig.from_dict({"method": {"name": "byol", "temperature": 0.2}})


def test_switching_method_starts_from_the_new_methods_defaults():
    simclr = ExperimentConfig.from_dict({"method": {"name": "simclr", "temperature": 0.3}})
    moco = simclr.with_overrides({"method.name": "moco"})
    assert moco.method.temperature == 0.07, "SimCLR's tau must not leak into MoCo"
    tuned = simclr.with_overrides({"method.name": "moco", "method.temperature": 0.1})
    assert tuned.method.temperature == 0.1
    assert simclr.with_overrides({"method.temperature": 0.4}).method.temperature == 0.4


# --- adding a method: one config class, one Method subclass, one registry line ----------------
class ToyConfig(MethodConfig):
    """A method that only exists in this test file."""

    name: Literal["toy"] = "toy"
    scale: float = Field(2.0, gt=0)


class Toy(Method):
    """Pulls the two views' features together (a loss that needs no labels)."""

    def forward(self, view1, view2, labels):
        f1, f2 = self.encoder(torch.cat([view1, view2])).chunk(2)
        loss = self.cfg.scale * (f1 - f2).pow(2).mean()
        return {"loss": loss, "toy": loss.detach()}


@pytest.fixture
def toy_method():
    register_method(ToyConfig, Toy)
    yield "toy"
    unregister_method("toy")


def test_a_method_added_in_a_test_file_trains_through_the_public_api(
    toy_method, fsdd_root, cache_dir, mlflow_store, tmp_path, monkeypatch
):
    from core.config import preset

    # The loop tells the method the epoch and lets it drop frozen gradients before a step.
    hooks: list[tuple] = []
    monkeypatch.setattr(Toy, "on_epoch_start", lambda self, epoch: hooks.append(("epoch", epoch)))
    monkeypatch.setattr(Toy, "on_before_optimizer_step", lambda self: hooks.append(("step",)))
    from core.tracking import RunIdentity
    from core.train import train

    cfg = preset(
        "quick",
        {
            "data": {"root": str(fsdd_root), "cache_dir": str(cache_dir), "max_clips": 120},
            "method": {"name": toy_method, "scale": 3.0},
            "augment": {"pipeline": ["TS"]},
            "model": {"width": 4, "proj_hidden_dim": 16, "proj_dim": 16, "eval_hidden_dim": 16},
            "train": {"epochs": 1, "batch_size": 16, "max_steps_per_epoch": 1, "eval_epochs": 1},
        },
    )
    assert isinstance(cfg.method, ToyConfig) and cfg.method.scale == 3.0
    with pytest.raises(ConfigError, match="method 'toy' has no field"):
        cfg.with_overrides({"method.temperature": 0.1})
    identity = RunIdentity(tracking_uri=f"sqlite:///{mlflow_store}/mlflow.db", experiment="toy")
    metrics = train(cfg, identity=identity)
    assert metrics["steps"] == 1.0 and metrics["toy"] > 0 and 0 <= metrics["test_top1"] <= 1
    assert hooks == [("epoch", 0), ("step",)]
