"""The cache builder's worker: decode files straight into rows of the cache array.

Kept free of torch so that worker processes start in a fraction of a second: a process
pool beats threads here because most of the per-file cost is Python-level work (the
soundfile wrapper, padding, mixing) that holds the GIL.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from core.audio import AudioDecodeError, load_clip

INT16_SCALE = 32767.0
STORAGE_SCALE = {"int16": INT16_SCALE, "float16": 1.0, "float32": 1.0}


def decode_rows(
    paths: list[Path],
    rows: list[int],
    array_path: Path,
    sample_rate: int,
    clip_samples: int,
    crop: str,
) -> list[tuple[int, str | None, bytes]]:
    """Decode ``paths`` into ``rows`` of the ``.npy`` at ``array_path``.

    Returns ``(row, error or None, sha256 of the file bytes)`` per file; failures are
    reported, never raised, so one bad file cannot abort a build.
    """
    out = np.load(array_path, mmap_mode="r+")
    scale = STORAGE_SCALE[out.dtype.name]
    results: list[tuple[int, str | None, bytes]] = []
    for path, row in zip(paths, rows, strict=True):
        try:
            data = Path(path).read_bytes()
        except OSError as error:
            results.append((row, f"cannot read: {error.strerror or error}", b""))
            continue
        try:
            clip = load_clip(data, sample_rate, clip_samples, crop)  # type: ignore[arg-type]
        except AudioDecodeError as error:
            results.append((row, str(error).removeprefix("<bytes>: "), b""))
            continue
        if out.dtype == np.int16:
            out[row] = np.round(np.clip(clip, -1.0, 1.0) * scale).astype(np.int16)
        else:
            out[row] = clip
        results.append((row, None, hashlib.sha256(data).digest()))
    out.flush()
    return results
