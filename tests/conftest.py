"""Shared fixtures: where the real recordings live (and the skip-or-fail rule for them),
the one Ray cluster of the session, and an MLflow server per module that needs one."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.servers import MlflowServer


def pytest_configure(config: pytest.Config) -> None:
    """Token authentication for every Ray the tests start or join, as every clarlab
    cluster runs: the session's own token in a file of its own (never the user's
    ~/.ray/auth_token). Set before any test module imports Ray, which reads the mode into
    its config at import; the drivers the fault tests start inherit both variables, as a
    `ray submit` on a node would."""
    folder = Path(tempfile.mkdtemp(prefix="clarlab-ray-token-"))
    token = folder / "ray_auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))


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


def _module_fixtures(item: pytest.Item) -> bool:
    """Whether the test uses a fixture built once per module (a server, a sweep)."""
    definitions = getattr(item, "_fixtureinfo", None)
    if definitions is None:
        return False
    return any(
        fixture.scope == "module"
        for name in item.fixturenames  # type: ignore[attr-defined]
        for fixture in definitions.name2fixturedefs.get(name, ())
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Lanes for ``make test`` (pytest-xdist, ``--dist loadgroup``, two workers): the tests
    of a module that share a module-scoped fixture stay in one lane (``xdist_group``), so
    the fixture is built once; the tests on Ray go first, as they are the long ones, and
    the short ones fill the lanes behind them. Each lane starts its session's one Ray
    cluster on its first test that needs it. Without xdist the marks change nothing."""
    for item in items:
        if _module_fixtures(item):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))  # type: ignore[attr-defined]
    items.sort(key=lambda item: "ray_cluster" not in getattr(item, "fixturenames", ()))


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
    """One real local Ray cluster for the whole session (a lane, under xdist); trials run
    in its workers. Sweeps run as commands (the fault tests) are drivers of their own on
    this cluster (``--address``), as on a cluster started with ``ray up``."""
    import ray
    from ray.cluster_utils import Cluster

    from core.sweep import init_ray
    from core.train import FAULT_ENV

    folder = tmp_path_factory.mktemp("ray-session")
    faults = folder / "faults.spec"
    faults.write_text("")
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
