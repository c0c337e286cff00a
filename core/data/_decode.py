"""The cache builder's worker: decode files straight into rows of the cache array.

Kept free of torch so that worker processes start in a fraction of a second: a process
pool beats threads here because most of the per-file cost is Python-level work (the
soundfile wrapper, padding, mixing) that holds the GIL.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from core.audio import AudioDecodeError, load_clip

INT16_SCALE = 32767.0
STORAGE_SCALE = {"int16": INT16_SCALE, "float16": 1.0, "float32": 1.0}
# libsndfile names the in-memory buffer it was given: "Error opening <_io.BytesIO object
# at 0x7f...>: Format not recognised." The address means nothing to whoever reads the
# manifest; the file's own name replaces it.
_BUFFER_OPENING = re.compile(r"Error opening <_io\.BytesIO object at 0x[0-9a-fA-F]+>: ")
_BUFFER = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def failure_reason(name: str, message: str) -> str:
    """``name: message`` with the decoder's buffer placeholders (``<bytes>``, a BytesIO
    repr) removed, so the reason names the file whatever read it."""
    message = message.removeprefix("<bytes>: ")
    message = _BUFFER.sub(name, _BUFFER_OPENING.sub("", message))
    return f"{name}: {message}"


def decode_rows(
    paths: list[Path],
    rows: list[int],
    array_path: Path,
    sample_rate: int,
    clip_samples: int,
    crop: str,
    names: list[str] | None = None,
) -> list[tuple[int, str | None, bytes]]:
    """Decode ``paths`` into ``rows`` of the ``.npy`` at ``array_path``.

    Returns ``(row, error or None, sha256 of the file bytes)`` per file; failures are
    reported, never raised, so one bad file cannot abort a build. An error starts with the
    file's name in ``names`` (as the manifest lists it: relative to the dataset folder;
    default: the full path), so it stands on its own in a warning or log line.
    """
    out = np.load(array_path, mmap_mode="r+")
    scale = STORAGE_SCALE[out.dtype.name]
    results: list[tuple[int, str | None, bytes]] = []
    names = [str(path) for path in paths] if names is None else names
    for path, row, name in zip(paths, rows, names, strict=True):
        try:
            data = Path(path).read_bytes()
        except OSError as error:
            reason = f"cannot read: {error.strerror or error}"
            results.append((row, failure_reason(name, reason), b""))
            continue
        try:
            clip = load_clip(data, sample_rate, clip_samples, crop)  # type: ignore[arg-type]
        except AudioDecodeError as error:
            results.append((row, failure_reason(name, str(error)), b""))
            continue
        if out.dtype == np.int16:
            out[row] = np.round(np.clip(clip, -1.0, 1.0) * scale).astype(np.int16)
        else:
            out[row] = clip
        results.append((row, None, hashlib.sha256(data).digest()))
    out.flush()
    return results
