"""Shared fixtures: where the real recordings live, and the skip-or-fail rule for them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _data_root() -> Path | None:
    root = os.environ.get("CLARLAB_DATA")
    return Path(root) if root else None


@pytest.fixture(scope="session")
def fsdd_root() -> Path:
    """The real FSDD folder (``$CLARLAB_DATA/fsdd``).

    Skips when it is absent on a developer machine; under ``CI=true`` a missing dataset is
    a failure, so CI can never pass by skipping the tests on real audio.
    """
    root = _data_root()
    candidate = root / "fsdd" if root else None
    if candidate is None or not (candidate / "recordings").is_dir():
        message = (
            f"real FSDD recordings not found at {candidate or '$CLARLAB_DATA/fsdd'}; "
            "set CLARLAB_DATA to the folder that holds fsdd/recordings"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return candidate


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the whole session, so the real FSDD is decoded once."""
    return tmp_path_factory.mktemp("clarlab-cache")


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite MLflow store for the session: creating its schema takes seconds, so tests
    share it and keep apart by experiment name."""
    return tmp_path_factory.mktemp("mlflow-store")


@pytest.fixture(scope="module")
def ray_cluster():
    """One real local Ray cluster (2 CPUs) per test module; trials run in its workers."""
    import ray

    from core.sweep import init_ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    init_ray(num_cpus=2)
    try:
        yield ray.cluster_resources()
    finally:
        ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def trust_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The registry of sweeps this user wrote (core/sweep/trust.py) lives in a session
    folder, not in the developer's own ~/.local/state."""
    folder = tmp_path_factory.mktemp("clarlab-state")
    os.environ["CLARLAB_STATE_DIR"] = str(folder)
    return folder
