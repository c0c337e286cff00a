"""Servers this project starts, bound to loopback unless a flag says otherwise.

``python -m core.serve mlflow`` is clarlab's MLflow tracking server: it builds the
``mlflow server`` command line (an SQLite or PostgreSQL store, artifacts served through
the server so that trials on other nodes upload them over HTTP), prints it and execs it.
It exists, rather than a line in the Makefile, for what the bare command leaves to the
caller:

- ``--allowed-hosts`` names the address it binds (and localhost, for SSH tunnels on any
  local port): MLflow 3 answers any other Host header with 403 ("DNS rebinding"), so a
  server bound to a cluster's private address would refuse the trials that reach it by
  that address;
- binding anything but loopback prints what becomes reachable, and by whom;
- a PostgreSQL password never lands on the command line (``ps`` shows it to every user
  of the machine): the store URI then travels in ``MLFLOW_BACKEND_STORE_URI``, and the
  printed line masks it;
- a missing database driver or auth package fails before the server starts, naming the
  package, instead of in a worker's traceback;
- ``ray-node-ip`` binds the address Ray uses for this node, which is the address the
  sweep driver hands to trials on other nodes in place of a loopback tracking URI
  (``core.sweep.driver.reachable_tracking_uri``).

    python -m core.serve mlflow                      # 127.0.0.1:5000, results/mlflow.db
    python -m core.serve mlflow --host ray-node-ip   # on a cluster's head node
    python -m core.serve mlflow --dry-run ...        # check and print, start nothing
    python -m core.serve mlflow --background LOG ... # start detached, return once healthy

``--background`` is for scripts that bring a machine up (``cluster.yaml``): the server is
started in its own session, the call returns once ``/health`` answers (or fails with the
log's tail if the server exits first, so a broken server fails ``ray up`` instead of
being found later), a server already answering there is left alone, and the server's
process group id is written beside the log (``LOG.pid``) for stopping it.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
DEFAULT_STORE = "sqlite:///results/mlflow.db"
DEFAULT_ARTIFACTS = "results/mlflow-artifacts"
RAY_NODE_IP = "ray-node-ip"
EXIT_REFUSED = 2
EXIT_FAILED = 1
START_TIMEOUT_S = 120.0

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
AUTH_PACKAGE = ("flask_wtf", "pip install 'mlflow[auth]'")

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
        allowed += [name.strip() for name in entry.split(",") if name.strip()]
    argv += ["--allowed-hosts", ",".join(dict.fromkeys(allowed))]

    if args.auth:
        _plan_auth(plan, args, scheme, store)
    plan.notices += exposure_notices(host, port, args.auth, args.host == RAY_NODE_IP)
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


def prepare(plan: ServerPlan) -> None:
    """Create the store's folder, the artifact folder and a missing basic-auth config."""
    for folder in plan.folders:
        folder.mkdir(parents=True, exist_ok=True)
    if plan.auth_config is not None and not plan.auth_config.exists():
        plan.auth_config.parent.mkdir(parents=True, exist_ok=True)
        # No password here: MLflow reads the admin's from MLFLOW_AUTH_ADMIN_PASSWORD.
        plan.auth_config.write_text(
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = {plan.auth_database}\n"
            "admin_username = admin\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )


def answers(url: str) -> bool:
    """Whether an HTTP server answers ``url`` with 200 within a second (directly: a proxy
    from the environment would not reach this machine's private or loopback address)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=1.0) as response:
            return response.status == 200
    except OSError:
        return False


def start_detached(plan: ServerPlan, log: Path, timeout_s: float = START_TIMEOUT_S) -> int:
    """Start the planned server in its own session, return once it answers ``/health``.

    0 when it answers (or another server already did), 1 with the log's tail when it
    exits or stays silent for ``timeout_s``: a script that brings a machine up stops there
    rather than reporting success for a server that never came up.
    """
    if answers(plan.health_url):
        print(f"already serving: {plan.health_url} answers; left as it is", flush=True)
        return 0
    prepare(plan)
    log = log.expanduser().resolve()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        process = subprocess.Popen(
            plan.argv,
            env={**os.environ, **plan.env},
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the shell (an SSH session) that started it
        )
    pid_file = log.with_name(log.name + ".pid")
    pid_file.write_text(f"{process.pid}\n")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            print(
                f"error: the server exited ({process.returncode}); {log}:\n{tail}", file=sys.stderr
            )
            return EXIT_FAILED
        if answers(plan.health_url):
            print(
                f"serving: {plan.health_url} (process group {process.pid}: "
                f"kill -- -$(cat {pid_file}) stops it; log {log})",
                flush=True,
            )
            return 0
        time.sleep(0.5)
    print(
        f"error: no answer from {plan.health_url} after {timeout_s:g} s; process group "
        f"{process.pid} is left running (kill -- -$(cat {pid_file})); see {log}",
        file=sys.stderr,
    )
    return EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    """``python -m core.serve mlflow [flags]``."""
    parser = argparse.ArgumentParser(
        prog="python -m core.serve", description=__doc__.split("\n\n")[0]
    )
    servers = parser.add_subparsers(dest="server", required=True)
    mlflow = servers.add_parser(
        "mlflow",
        help="the MLflow tracking server (UI, REST API, served artifacts)",
        description="Print, then exec, `mlflow server` for clarlab's tracking store.",
    )
    mlflow.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}: this machine only). Any other "
        f"address makes {EXPOSURE} reachable: a private address (10.x, 192.168.x) from "
        f"every machine on that network, 0.0.0.0 from every network this machine is on, "
        f"without a password unless --auth. '{RAY_NODE_IP}': the address Ray uses for this "
        f"node, for a cluster's head, where trials on the other nodes log to it",
    )
    mlflow.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    mlflow.add_argument(
        "--backend-store-uri",
        default=DEFAULT_STORE,
        help=f"runs, metrics, parameters: sqlite:///PATH (default {DEFAULT_STORE}, the "
        "store `make demo` writes) or postgresql://USER@HOST/DB for many concurrent trials "
        "(password in ~/.pgpass or PGPASSWORD rather than in the URI)",
    )
    mlflow.add_argument(
        "--artifacts-destination",
        default=DEFAULT_ARTIFACTS,
        help=f"where served artifacts are stored: a folder (default {DEFAULT_ARTIFACTS}) or "
        "s3://BUCKET/PREFIX; clients upload and download them through the server",
    )
    mlflow.add_argument(
        "--allowed-hosts",
        nargs="*",
        metavar="HOST[:PORT]",
        help="more Host headers to accept (a DNS name clients use; wildcards as in "
        "`mlflow server --allowed-hosts`). Always accepted: localhost on any port, and the "
        "bound address",
    )
    mlflow.add_argument(
        "--workers", type=int, default=2, help="server worker processes (default 2)"
    )
    mlflow.add_argument(
        "--auth",
        action="store_true",
        help="MLflow's basic-auth app (needs `pip install 'mlflow[auth]'`, "
        "MLFLOW_FLASK_SERVER_SECRET_KEY and, on the first start, MLFLOW_AUTH_ADMIN_PASSWORD); "
        "users live beside the SQLite store unless --auth-config says otherwise",
    )
    mlflow.add_argument(
        "--auth-config",
        type=Path,
        help="basic-auth ini file (default: $MLFLOW_AUTH_CONFIG_PATH, else basic_auth.ini "
        "beside the SQLite store, written on the first start)",
    )
    mlflow.add_argument(
        "--background",
        type=Path,
        metavar="LOG",
        help="start the server detached with its output in LOG, return once it answers "
        "(exit 1 with the log's tail if it does not); a server already answering is left "
        "alone. LOG.pid holds its process group id",
    )
    mlflow.add_argument(
        "--dry-run", action="store_true", help="check and print the command, start nothing"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Check, print, then exec the server (the process becomes ``mlflow server``)."""
    args = build_parser().parse_args(argv)
    try:
        plan = plan_mlflow(args)
        check_plan(plan)
    except LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    for notice in plan.notices:
        print(notice, file=sys.stderr)
    print(plan.command_line(), flush=True)
    sys.stderr.flush()
    if args.dry_run:
        return 0
    if args.background is not None:
        return start_detached(plan, args.background)
    prepare(plan)
    os.execve(plan.argv[0], plan.argv, {**os.environ, **plan.env})
    return 0  # not reached: execve replaces this process


if __name__ == "__main__":
    sys.exit(main())
