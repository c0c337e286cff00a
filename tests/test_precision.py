"""Precision and memory format: bf16 autocast on a CPU that does bf16 natively, channels-last
for 2D encoders, and each trial's MLflow run saying which it trained in."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from core.config import preset
from core.sections import ConfigError
from core.train import CallbackContext, run_loop
from core.train.precision import amp_settings, cpu_bf16_native, memory_format
from tests.test_train import runs_of, small_config

CPU = torch.device("cpu")


def _cpuinfo_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.machine() != "x86_64",
    reason="the kernel's CPU flags are read from /proc/cpuinfo on x86-64 Linux",
)
def test_native_bf16_is_read_from_the_cpus_instruction_set():
    """The probe agrees with the flags the kernel reports: AMX tiles or AVX512-BF16."""
    assert cpu_bf16_native() == bool({"amx_tile", "avx512_bf16"} & _cpuinfo_flags())


@pytest.mark.parametrize("native", [True, False])
def test_auto_picks_bf16_on_a_cpu_only_where_it_is_native(monkeypatch, native):
    """``auto`` follows the probe; ``bf16`` and ``off`` force it; ``fp16`` on a CPU trains
    in fp32 (no CPU GradScaler); no CPU choice needs a scaler."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda native=native: native)
    assert amp_settings("auto", CPU) == ((torch.bfloat16, False) if native else (None, False))
    assert amp_settings("bf16", CPU) == (torch.bfloat16, False)
    assert amp_settings("off", CPU) == (None, False)
    assert amp_settings("fp16", CPU) == (None, False)


def test_2d_encoders_go_channels_last_and_1d_ones_stay_contiguous():
    two_d = preset("quick", {"frontend": {"name": "stft3"}, "model": {"encoder": "resnet18"}})
    one_d = preset("quick", {"frontend": {"name": "raw1d"}, "model": {"encoder": "resnet18_1d"}})
    assert memory_format(two_d) == torch.channels_last
    assert memory_format(one_d) == torch.contiguous_format
    contiguous = two_d.with_overrides({"train": {"memory_format": "contiguous"}})
    assert memory_format(contiguous) == torch.contiguous_format
    with pytest.raises(ConfigError, match="train.memory_format=.channels_last. needs a 2D"):
        one_d.with_overrides({"train": {"memory_format": "channels_last"}})


def test_a_trial_trains_in_what_it_logs(fsdd_root, cache_dir, mlflow_store, tmp_path, monkeypatch):
    """A CPU trial under the defaults: the encoder sees channels-last inputs under bf16
    autocast where the CPU has native bf16 (fp32 elsewhere), its loss stays fp32, and
    the MLflow run's tags name the precision and layout it trained in; ``off`` and
    ``contiguous`` train and log fp32 and contiguous."""
    from core.methods.simclr import SimCLR

    seen: list[tuple[bool, torch.dtype, torch.dtype]] = []
    real_forward = SimCLR.forward

    def recording(self, view1, view2, labels):
        outputs = real_forward(self, view1, view2, labels)
        seen.append(
            (
                view1.is_contiguous(memory_format=torch.channels_last),
                torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None,
                outputs["loss"].dtype,
            )
        )
        return outputs

    monkeypatch.setattr(SimCLR, "forward", recording)
    expected = "bf16" if cpu_bf16_native() else "fp32"
    for name, train, precision, layout in (
        ("default", {}, expected, "channels_last"),
        ("fp32", {"amp": "off", "memory_format": "contiguous"}, "fp32", "contiguous"),
    ):
        seen.clear()
        cfg, who = small_config(
            fsdd_root, cache_dir, mlflow_store, f"{tmp_path.name}-{name}",
            train={"epochs": 1, "max_steps_per_epoch": 1, "eval_epochs": 1, **train},
        )  # fmt: skip
        run_loop(cfg, CallbackContext(), who)
        (run,) = runs_of(who)
        assert run.data.tags["clarlab.precision"] == precision
        assert run.data.tags["clarlab.memory_format"] == layout
        (channels_last, autocast_dtype, loss_dtype) = seen[0]
        assert channels_last == (layout == "channels_last")
        assert autocast_dtype == {"bf16": torch.bfloat16, "fp32": None}[precision]
        assert loss_dtype == torch.float32


@pytest.mark.parametrize("native", [True, False])
def test_the_dry_run_says_what_precision_each_trial_gets_and_costs_it_so(
    fsdd_root, capsys, monkeypatch, native
):
    """On a CPU with native bf16 the laptop matrix's dry run says its trials train bf16 and
    channels-last, and estimates them at the bf16 rate; without it, fp32 at the fp32 rate."""
    from tests.test_ablation_scripts import _dry_run_output

    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda native=native: native)
    argv = ("--preset", "laptop", "--frontends", "stft3", "--augs", "FD", "TM", "--no-controls")
    _, out = _dry_run_output("run_aug_matrix", capsys, *argv)
    precision = "bf16" if native else "fp32"
    does = "does" if native else "does not do"
    assert f"which {does} bf16 natively" in out
    assert f"12 trial(s) {precision}, channels_last" in out  # 4 cells x 3 seeds
    hours = float(out.split("(training ")[1].split(",")[0])
    from core.sweep.dryrun import MEASURED_CLIPS_PER_S

    rate = MEASURED_CLIPS_PER_S[("cpu", "2d", precision)]
    # 4 trials x 3 seeds x 20 epochs x 42 steps x 64 clips, one core each
    assert hours == pytest.approx(12 * 20 * 42 * 64 / rate / 3600, abs=0.006)


def test_the_dry_run_prices_evaluations_and_the_vocoder_and_gives_the_wall_time(
    fsdd_root, capsys
):
    """PS and TST cost a CPU trial its phase vocoder on both views, once per code in the
    pipeline; every trial pays its evaluations (a control only its one); the wall time is
    the core-hours over the trials this machine runs at a time."""
    from core.data import get_spec
    from core.sweep.dryrun import EVAL_SECONDS_PER_CLIP, VOCODER_SECONDS_PER_SAMPLE
    from tests.test_ablation_scripts import _dry_run_output

    argv = ("--preset", "laptop", "--frontends", "stft3", "--augs", "PS", "FD")
    _, out = _dry_run_output("run_aug_matrix", capsys, "--num-cpus", "2", *argv)
    line = next(x for x in out.splitlines() if x.startswith("estimated cost: "))
    figures = dict(
        (name.strip(), float(value))
        for name, value in (
            part.rsplit(" ", 1) for part in line.split("(")[1].split(")")[0].split(", ")
        )
    )
    total = float(line.split()[2])
    assert total == pytest.approx(sum(figures.values()), abs=0.02)
    # PS, PS>FD and FD>PS at 3 seeds: one vocoder pass a view, 20 epochs x 42 x 64 clips
    samples = 9 * 20 * 42 * 64 * 2 * get_spec("fsdd").clip_seconds * 8000
    vocoder = samples * VOCODER_SECONDS_PER_SAMPLE / 3600
    assert figures["PS/TST vocoder"] == pytest.approx(vocoder, abs=0.006)
    # 12 cells and 3 supervised at 4 evaluations, 3 untrained controls at 1; 3,000 clips
    evaluations = (15 * 4 + 3) * 3000 * EVAL_SECONDS_PER_CLIP / 3600
    assert figures["evaluation"] == pytest.approx(evaluations, abs=0.006)
    wall = float(line.split("about ")[1].split(" h of wall time at 2 trial(s)")[0])
    assert wall == pytest.approx(total / 2, abs=0.06)
