"""The precision and memory format a trial trains in, decided once from the device.

``train.amp``: ``auto`` trains under bf16 autocast where the hardware does bf16 natively
(a CUDA GPU that reports it, a CPU with AMX or AVX512-BF16), fp16 with a GradScaler on a
GPU without native bf16, and fp32 on any other CPU; ``bf16``/``fp16``/``off`` force it.
On a CPU ``fp16`` trains in fp32: CPU autocast has no fast fp16 path and no GradScaler,
and the trial's ``clarlab.precision`` tag says what it got. The losses, the front end and
the evaluation (feature extraction and the evaluation head's softmax) stay fp32 whatever
is chosen (:func:`core.losses.fp32`; the front end runs outside autocast).

``train.memory_format``: ``auto`` puts 2D encoders and their inputs in channels-last, the
layout oneDNN's and cuDNN's convolutions are fastest in, and leaves 1D encoders alone.
"""

from __future__ import annotations

import torch

from core.config import ExperimentConfig

PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX tiles or AVX512-BF16), as PyTorch's
    own CPU probe reports it. Read from the instruction set, never guessed from a model
    name: on a CPU without either, bf16 autocast is emulated and slower than fp32."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


def amp_settings(mode: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether a GradScaler is needed)."""
    if mode == "off":
        return None, False
    if device.type == "cpu":
        if mode == "bf16" or (mode == "auto" and cpu_bf16_native()):
            return torch.bfloat16, False
        return None, False
    if device.type != "cuda":
        return None, False
    # Emulated bf16 (a V100, the paper's GPU) runs without tensor cores: fp16 with a
    # scaler is the fast choice there, so "auto" only counts native bf16.
    native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    if mode == "fp16" or (mode == "auto" and not native_bf16):
        return torch.float16, True
    return torch.bfloat16, False


def memory_format(cfg: ExperimentConfig) -> torch.memory_format:
    """Channels-last for a 2D encoder under ``auto`` or when asked; contiguous otherwise
    (a 1D encoder's 3D tensors have no channels-last layout)."""
    choice = cfg.train.memory_format  # channels_last on a 1D encoder: refused by the config
    if choice == "channels_last" or (choice == "auto" and cfg.frontend.is_2d):
        return torch.channels_last
    return torch.contiguous_format


def memory_format_name(layout: torch.memory_format) -> str:
    return "channels_last" if layout == torch.channels_last else "contiguous"
