"""A trial's checkpoint: one ``state.pt`` per epoch, written atomically and read with
``weights_only=True`` (a checkpoint is data, never code)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FILE = "state.pt"


def save_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    """Write the trial state in a ``weights_only=True``-loadable form, atomically.

    The state goes to a temporary file in the same folder, is fsynced, and only then
    replaces ``state.pt`` (``os.replace`` within one file system is atomic); the folder is
    fsynced so the rename itself survives a power cut. A writer killed mid-write, or a full
    disk, therefore leaves the previous complete ``state.pt`` (or none), never a torn file
    that a restore would fail on; the temporary file is removed when the write raises.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / CHECKPOINT_FILE
    handle, temporary = tempfile.mkstemp(prefix=f".{CHECKPOINT_FILE}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return folder


def load_checkpoint(folder: Path) -> dict[str, Any]:
    return torch.load(folder / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
