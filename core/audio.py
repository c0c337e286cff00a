"""Decode audio files into fixed-length mono clips at a target rate.

Decoding uses soundfile (libsndfile: WAV, FLAC, OGG, and MP3 where the library has it),
never ``torchaudio.load``, which needs torchcodec and a system FFmpeg. Resampling uses
soxr's high-quality mode: a proper band-limited resampler for any rate pair (8, 22.05,
44.1, 48 kHz...), fast enough on CPU to decode whole datasets once.

Length fitting follows the papers: CLAR pads with zeros or clips on the right; QUACLRS
pads short clips with trailing silence and trims long ones around their centre.

Every failure to produce a usable clip raises :class:`AudioDecodeError` with the reason,
so the cache can exclude the file and list it instead of crashing a whole build.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile
import soxr

Crop = Literal["right", "center"]
_UNKNOWN_WAV_SIZES = (0, 0xFFFFFFFF)  # streamed/RF64 writers leave the size open


class AudioDecodeError(ValueError):
    """A file cannot be turned into a clip: corrupt, empty, truncated, or not finite."""


def wav_truncation(data: bytes) -> str | None:
    """Why a RIFF/WAVE byte string is truncated, or ``None`` if its data chunk is whole.

    libsndfile silently decodes the part of a truncated WAV that is present, so a
    half-downloaded file would enter the cache as a shorter clip; the declared size of the
    ``data`` chunk tells whether bytes are missing.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    offset = 12
    while offset + 8 <= len(data):
        chunk_id, size = (
            data[offset : offset + 4],
            struct.unpack("<I", data[offset + 4 : offset + 8])[0],
        )
        if chunk_id == b"data":
            available = len(data) - offset - 8
            if size not in _UNKNOWN_WAV_SIZES and size > available:
                return f"truncated WAV: data chunk declares {size} bytes, {available} present"
            return None
        offset += 8 + size + (size & 1)
    return "truncated WAV: no data chunk"


def read_audio(source: Path | str | bytes) -> tuple[np.ndarray, int]:
    """Decode a file (or its bytes) to float32 ``(frames, channels)`` and its sample rate.

    Integer PCM of any width (16/24/32 bit) and float files all come out scaled to
    [-1, 1] by libsndfile.
    """
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    if not data:
        raise AudioDecodeError(f"{name}: empty file (0 bytes)")
    truncated = wav_truncation(data)
    if truncated:
        raise AudioDecodeError(f"{name}: {truncated}")
    try:
        audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        raise AudioDecodeError(f"{name}: cannot decode: {error}") from None
    if audio.shape[0] == 0:
        raise AudioDecodeError(f"{name}: decodes to 0 samples")
    if not np.isfinite(audio).all():
        raise AudioDecodeError(f"{name}: contains NaN or Inf samples")
    return audio, int(rate)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Average the channels of ``(frames, channels)`` audio (1D input passes through)."""
    return audio.mean(axis=1, dtype=np.float32) if audio.ndim == 2 else audio


def resample(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling (soxr "HQ") along the first axis; no-op at equal rates."""
    if source_rate <= 0 or target_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {source_rate} -> {target_rate}")
    if source_rate == target_rate:
        return audio
    return soxr.resample(audio, source_rate, target_rate, quality="HQ").astype(np.float32)


def fit_length(audio: np.ndarray, length: int, crop: Crop = "right") -> np.ndarray:
    """Pad with trailing zeros or cut to ``length`` samples along the last axis.

    ``crop="right"`` keeps the start (CLAR); ``crop="center"`` keeps the middle of long
    clips (QUACLRS). Short clips are padded at the end in both modes.
    """
    if crop not in ("right", "center"):
        raise ValueError(f"crop must be 'right' or 'center', got {crop!r}")
    current = audio.shape[-1]
    if current > length:
        start = (current - length) // 2 if crop == "center" else 0
        return audio[..., start : start + length]
    if current < length:
        padding = [(0, 0)] * (audio.ndim - 1) + [(0, length - current)]
        return np.pad(audio, padding)
    return audio


def load_clip(
    source: Path | str | bytes,
    sample_rate: int,
    clip_samples: int,
    crop: Crop = "right",
) -> np.ndarray:
    """Decode, mix to mono, resample and fit: a float32 clip of exactly ``clip_samples``."""
    audio, rate = read_audio(source)
    mono = resample(to_mono(audio), rate, sample_rate)
    clip = fit_length(mono, clip_samples, crop)
    if not np.isfinite(clip).all():  # a resampler can turn denormal garbage into Inf
        raise AudioDecodeError(f"{source if not isinstance(source, bytes) else '<bytes>'}: "
                               "resampled clip is not finite")  # fmt: skip
    return np.ascontiguousarray(clip, dtype=np.float32)
