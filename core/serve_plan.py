"""What ``python -m core.serve mlflow`` will run, worked out before anything runs.

:mod:`core.serve` is the command: it parses the flags, prints the plan and execs it (or
starts it detached). The plan is made here: the ``mlflow server`` argv, the Host headers it
must accept, where a store password travels, which packages must be installed, and what
binding a non-loopback address exposes, and to whom. It lives apart from the command so
that it stays pure (nothing is created, started or imported but Ray's node address for
``ray-node-ip``): a dry run and the tests read exactly the plan a real start would run.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import os
import shlex
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DEFAULT_STORE = "sqlite:///results/mlflow.db"
RAY_NODE_IP = "ray-node-ip"

# Host headers a loopback client sends: a browser through `ray attach -p 5000` or `ssh -L`
# on any local port, and the sweep driver on the head (http://localhost:5000).
LOCAL_HOST_HEADERS = ("localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*", "[::1]", "[::1]:*")

# The Python package each store or artifact scheme needs in the server's environment, and
# how to install it (neither is in clarlab's dependencies: SQLite and local files are).
STORE_DRIVERS = {
    "postgresql": ("psycopg2", "pip install psycopg2-binary"),
    "postgresql+psycopg2": ("psycopg2", "pip install psycopg2-binary"),
    "postgresql+psycopg": ("psycopg", "pip install 'psycopg[binary]'"),
    "postgresql+pg8000": ("pg8000", "pip install pg8000"),
}
ARTIFACT_DRIVERS = {"s3": ("boto3", "pip install boto3")}
AUTH_PACKAGE = ("flask_wtf", "pip install -e '.[server]' (mlflow[auth])")
JOBS_ENV = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"

EXPOSURE = (
    "the MLflow UI and REST API (read every run, metric, parameter and artifact; create, "
    "change or delete runs, experiments and artifacts)"
)


class LaunchError(Exception):
    """A request the launcher refuses, with the fix; the server is not started."""


@dataclass
class ServerPlan:
    """What will run: the argv to exec, environment variables it needs, what is printed
    about it, and the folders and files to create first."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    shown_env: dict[str, str] = field(default_factory=dict)  # env as printed (masked)
    notices: list[str] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)
    auth_config: Path | None = None  # basic_auth.ini to write if it does not exist yet
    auth_database: str | None = None
    needs: list[tuple[str, str]] = field(default_factory=list)  # (module, how to install)
    health_url: str = ""  # where a started server answers, from this machine

    def command_line(self) -> str:
        """The line printed before exec: what a reader can paste, passwords masked."""
        prefix = [f"{name}={shlex.quote(value)}" for name, value in self.shown_env.items()]
        return " ".join([*prefix, shlex.join(self.argv)])


def is_loopback(host: str) -> bool:
    """Whether ``host`` is an address (or the name) only this machine can connect to."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    """Whether binding ``host`` listens on every interface (0.0.0.0, ::)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def host_header(host: str, port: int | None = None) -> str:
    """``host`` as a client writes it in the Host header (IPv6 in brackets)."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{shown}:{port}" if port is not None else shown


def resolve_host(host: str) -> str:
    """``ray-node-ip`` -> the address Ray uses for this node; any other value as given.

    Without a running driver Ray derives it as ``ray start`` does (the source address of
    the route out of this machine), so on a head node it is the address the head
    registered and the address the sweep driver hands to trials on other nodes.
    """
    if host != RAY_NODE_IP:
        return host
    import ray.util

    return str(ray.util.get_node_ip_address())


def this_machine_names() -> list[str]:
    """Names and addresses clients may use for this machine (for a wildcard bind)."""
    names = {socket.gethostname(), socket.getfqdn()}
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None)
    except OSError:
        infos = []
    names.update(str(info[4][0]) for info in infos)
    return sorted(name for name in names if name and not is_loopback(name))


def masked_uri(uri: str) -> str:
    """``uri`` with the password of its user info replaced by ``***``."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    userinfo = f"{parts.username or ''}:***"
    hostport = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{hostport}"))


def _sqlite_path(uri: str) -> Path:
    """The database file of a ``sqlite:///`` URI (relative paths stay relative to the
    working directory, as SQLAlchemy reads them)."""
    path = uri[len("sqlite:///") :]
    if not path or path == ":memory:":
        raise LaunchError(
            f"--backend-store-uri {uri}: an in-memory store loses every run when the server "
            f"stops; give a file, e.g. {DEFAULT_STORE}"
        )
    return Path(path)


def plan_mlflow(args: argparse.Namespace) -> ServerPlan:
    """The ``mlflow server`` invocation for ``args``, with what it exposes said.

    Pure apart from resolving ``ray-node-ip``: nothing is created or imported here, so a
    dry run shows exactly what a real run would do.
    """
    host = resolve_host(args.host)
    port = int(args.port)
    if not 0 < port < 65536:
        raise LaunchError(f"--port {port}: expected 1-65535")
    if args.workers < 1:
        raise LaunchError(f"--workers {args.workers}: expected at least 1")
    store = args.backend_store_uri
    scheme = urlsplit(store).scheme.lower()
    argv = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port)]
    local = "127.0.0.1" if is_wildcard(host) else host
    plan = ServerPlan(argv=argv, health_url=f"http://{host_header(local, port)}/health")

    if scheme == "sqlite":
        database = _sqlite_path(store)
        plan.folders.append(database.expanduser().parent)
        argv += ["--backend-store-uri", store]
    elif scheme in STORE_DRIVERS:
        plan.needs.append(STORE_DRIVERS[scheme])
        if urlsplit(store).password is not None:
            # The environment of a process is readable only by its user; argv is not.
            plan.env["MLFLOW_BACKEND_STORE_URI"] = store
            plan.shown_env["MLFLOW_BACKEND_STORE_URI"] = masked_uri(store)
            plan.notices.append(
                "note: the store URI holds a password; it is passed in "
                "MLFLOW_BACKEND_STORE_URI, not on the command line. ~/.pgpass or PGPASSWORD "
                "keep it out of shell history as well."
            )
        else:
            argv += ["--backend-store-uri", store]
    else:
        raise LaunchError(
            f"--backend-store-uri {masked_uri(store)}: expected sqlite:///PATH or "
            f"postgresql://USER@HOST/DATABASE (also postgresql+psycopg://, postgresql+pg8000://)"
        )

    destination = args.artifacts_destination
    artifact_scheme = urlsplit(destination).scheme.lower()
    if artifact_scheme in ("", "file"):
        local = Path(urlsplit(destination).path if artifact_scheme else destination)
        local = local.expanduser().resolve()
        plan.folders.append(local)
        destination = str(local)
    elif artifact_scheme in ARTIFACT_DRIVERS:
        plan.needs.append(ARTIFACT_DRIVERS[artifact_scheme])
    argv += ["--serve-artifacts", "--artifacts-destination", destination]
    argv += ["--workers", str(args.workers)]

    allowed = list(LOCAL_HOST_HEADERS)
    if is_wildcard(host):
        for name in this_machine_names():
            allowed += [host_header(name), host_header(name, port)]
    elif not is_loopback(host):
        allowed += [host_header(host), host_header(host, port)]
    for entry in args.allowed_hosts or ():
        for name in (name.strip() for name in entry.split(",") if name.strip()):
            if name.split(":")[0] == "*" and not getattr(args, "allow_any_host", False):
                raise LaunchError(
                    f"--allowed-hosts {name!r} accepts every Host header, which turns off "
                    f"MLflow's protection against DNS rebinding (a web page in a browser on "
                    f"this network could then drive the server); name the hosts clients use, "
                    f"or add --allow-any-host if you mean it"
                )
            allowed.append(name)
    argv += ["--allowed-hosts", ",".join(dict.fromkeys(allowed))]

    if args.auth:
        _plan_auth(plan, args, scheme, store)
    plan.notices += exposure_notices(host, port, args.auth, args.host == RAY_NODE_IP)
    # MLflow 3 starts a job runner with about ten worker processes (GenAI evaluation and
    # trace jobs, ~230 MB each) next to every server; clarlab's tracking submits no jobs.
    # Off unless the user's environment turns it on.
    plan.env[JOBS_ENV] = os.environ.get(JOBS_ENV, "false")
    return plan


def _plan_auth(plan: ServerPlan, args: argparse.Namespace, scheme: str, store: str) -> None:
    """MLflow's basic-auth app with its users beside the store, passwords from the
    environment (``MLFLOW_AUTH_ADMIN_PASSWORD``), never from a file in the repository."""
    plan.needs.append(AUTH_PACKAGE)
    plan.argv += ["--app-name", "basic-auth"]
    configured = args.auth_config or os.environ.get("MLFLOW_AUTH_CONFIG_PATH")
    if configured:
        config = Path(configured).expanduser().resolve()
    elif scheme == "sqlite":
        config = _sqlite_path(store).expanduser().resolve().parent / "basic_auth.ini"
    else:
        raise LaunchError(
            "--auth with a PostgreSQL store: pass --auth-config PATH (an ini file whose "
            "[mlflow] database_uri names the users' database), or set MLFLOW_AUTH_CONFIG_PATH"
        )
    plan.env["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
    plan.shown_env["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
    if not config.exists():
        plan.auth_config = config
        plan.auth_database = f"sqlite:///{config.parent / 'basic_auth.db'}"
    for name, why in (
        ("MLFLOW_FLASK_SERVER_SECRET_KEY", "the CSRF key, the same for every server process"),
        ("MLFLOW_AUTH_ADMIN_PASSWORD", "the admin's password on the first start"),
    ):
        if not os.environ.get(name):
            plan.notices.append(f"note: --auth needs {name} in the environment ({why})")


def exposure_notices(host: str, port: int, auth: bool, node_ip: bool) -> list[str]:
    """What binding ``host`` makes reachable, and to whom, said before the server starts."""
    if is_loopback(host):
        return []
    if is_wildcard(host):
        who = f"every network this machine is on ({host} listens on all interfaces)"
    elif node_ip:
        who = f"every machine that can route to {host}, the address Ray uses for this node"
    else:
        who = f"every machine that can route to {host}"
    guard = (
        "users must log in (--auth)"
        if auth
        else "nobody is asked for a password (--auth adds MLflow's basic-auth app)"
    )
    level = "note" if auth and not is_wildcard(host) else "warning"
    return [f"{level}: {host_header(host, port)} makes {EXPOSURE} reachable from {who}; {guard}"]


def check_plan(plan: ServerPlan) -> None:
    """Refuse a plan whose packages are missing here, naming how to install them."""
    missing = [
        (module, install)
        for module, install in dict.fromkeys(plan.needs)
        if importlib.util.find_spec(module) is None
    ]
    if missing:
        raise LaunchError(
            "not installed in this environment: "
            + "; ".join(f"{module} ({install})" for module, install in missing)
        )
