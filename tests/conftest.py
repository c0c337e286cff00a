"""Shared fixtures: where the real recordings live (and the skip-or-fail rule for them),
the one Ray cluster of the session, and an MLflow server per module that needs one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.servers import MlflowServer


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


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``make test`` runs two lanes), every test on the session's Ray
    cluster goes to one worker (``--dist loadgroup``), so that worker starts the one
    cluster and the other lane runs everything else beside it."""
    for item in items:
        if "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("ray"))


@dataclass
class SessionRay:
    """The session's Ray cluster: a head node of 2 CPUs (and one ``slot``, the resource a
    two-worker trial spans two nodes by) that every test shares; the multi-node tests add
    a second node to it for their module. Its trials read the fault-injection specs from
    ``faults`` (``CLARLAB_INJECT_FAULT=@faults``), which :meth:`arm` extends."""

    cluster: Any
    faults: Path
    armed: list[str] = field(default_factory=list)

    def arm(self, kind: str, epoch: int, step: int, rank: int) -> Path:
        """Arm one fault (core.train.faults): it fires once, at the named point of the
        next trial that reaches it, and its marker file is gone once it has fired."""
        marker = self.faults.parent / f"fault-{len(self.armed)}-{kind}-{epoch}-{step}-{rank}"
        self.armed.append(f"{kind}:{epoch}:{step}:{rank}:{marker}")
        self.faults.write_text("\n".join(self.armed) + "\n")
        marker.touch()
        return marker


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionRay]:
    """One real local Ray cluster for the whole session; trials run in its workers.

    Sweeps run as commands in a process of their own (the SIGKILLed-driver and terminal
    tests) start their own local Ray, as a user's command does: that is what they test."""
    import ray
    from ray.cluster_utils import Cluster

    from core.sweep import init_ray
    from core.train import FAULT_ENV

    folder = tmp_path_factory.mktemp("ray-session")
    faults = folder / "faults.spec"
    faults.write_text("")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "include_dashboard": False, "resources": {"slot": 1}},
    )
    previous = os.environ.get(FAULT_ENV)
    os.environ[FAULT_ENV] = f"@{faults}"  # reaches every trial through the job's environment
    try:
        init_ray(address=cluster.address)
    finally:
        if previous is None:
            os.environ.pop(FAULT_ENV)
        else:
            os.environ[FAULT_ENV] = previous
    try:
        yield SessionRay(cluster, faults)
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real MLflow tracking server on loopback for the module (its own SQLite store and
    artifact folder), started through clarlab's launcher, stopped afterwards. Returned as
    soon as it is launched: callers overlap its start with their own set-up and call
    ``wait_until_ready()``."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).launch()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="session", autouse=True)
def trust_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The registry of sweeps this user wrote (core/sweep/trust.py) lives in a session
    folder, not in the developer's own ~/.local/state."""
    folder = tmp_path_factory.mktemp("clarlab-state")
    os.environ["CLARLAB_STATE_DIR"] = str(folder)
    return folder
