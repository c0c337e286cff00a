"""What the tests check of a figure: a real PNG with something drawn on it."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def figure_png(figure: Any) -> bytes:
    """A matplotlib Figure as PNG bytes (as ``MlflowClient.log_figure`` writes it)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def assert_png_not_blank(image: bytes | Path, min_std: float = 0.02) -> np.ndarray:
    """The pixels of a PNG that is not blank: more than a few distinct colours and a
    spread of values (a white canvas, or one flat colour, fails). Returns the pixels."""
    import matplotlib.image

    data = Path(image).read_bytes() if isinstance(image, Path) else image
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
    colours = np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)
    assert len(colours) > 16, f"only {len(colours)} distinct colours: a blank figure"
    assert float(pixels[..., :3].std()) > min_std, "no contrast: a blank figure"
    return pixels
