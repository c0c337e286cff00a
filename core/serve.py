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
  (``core.sweep.session.reachable_tracking_uri``).

    python -m core.serve mlflow                      # 127.0.0.1:5000, results/mlflow.db
    python -m core.serve mlflow --host ray-node-ip   # on a cluster's head node
    python -m core.serve mlflow --dry-run ...        # check and print, start nothing
    python -m core.serve mlflow --background LOG ... # start detached, return once healthy

``--background`` is for scripts that bring a machine up (``cluster.yaml``): the server is
started in its own session, the call returns once ``/health`` answers (or fails with the
log's tail if the server exits first, so a broken server fails ``ray up`` instead of
being found later), a server already answering there is left alone, and the server's
process group id is written beside the log (``LOG.pid``) for stopping it.

The plan (argv, environment, notices, needed packages) is made, without side effects, by
:mod:`core.serve_plan`; this module is the command around it and what it starts.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from core.serve_plan import (
    DEFAULT_STORE,
    EXPOSURE,
    RAY_NODE_IP,
    LaunchError,
    ServerPlan,
    check_plan,
    plan_mlflow,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
DEFAULT_ARTIFACTS = "results/mlflow-artifacts"
EXIT_REFUSED = 2
EXIT_FAILED = 1
START_TIMEOUT_S = 120.0


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


def stop_detached(logs: Sequence[Path], timeout_s: float = 20.0) -> int:
    """Stop the servers ``--background LOG`` started (their process groups, from
    ``LOG.pid``): SIGTERM, then SIGKILL after ``timeout_s``. What a cluster's teardown runs
    on the head before ``ray down``, which stops Ray but not these. 0 when none is left
    running; a missing pid file or a group already gone counts as stopped."""
    left = 0
    for log in logs:
        pid_file = log.expanduser().with_name(log.name + ".pid")
        try:
            group = int(pid_file.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            print(f"{pid_file}: no server recorded", flush=True)
            continue
        if not _group_alive(group):
            print(f"process group {group} ({log}): already stopped", flush=True)
            pid_file.unlink(missing_ok=True)
            continue
        os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _group_alive(group):
            os.killpg(group, signal.SIGKILL)
            time.sleep(0.2)
        if _group_alive(group):
            print(f"error: process group {group} ({log}) is still running", file=sys.stderr)
            left += 1
            continue
        pid_file.unlink(missing_ok=True)
        print(f"stopped process group {group} ({log})", flush=True)
    return EXIT_FAILED if left else 0


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's: alive, and not ours to stop
    return True


def build_parser() -> argparse.ArgumentParser:
    """``python -m core.serve mlflow [flags]`` and ``python -m core.serve stop LOG...``."""
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
        "--allow-any-host",
        action="store_true",
        help="let --allowed-hosts hold '*' (every Host header: MLflow's DNS-rebinding "
        "protection off); refused without this flag",
    )
    mlflow.add_argument(
        "--workers", type=int, default=2, help="server worker processes (default 2)"
    )
    mlflow.add_argument(
        "--auth",
        action="store_true",
        help="MLflow's basic-auth app (needs the server extra: `pip install -e '.[server]'`, "
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
    stop = servers.add_parser(
        "stop",
        help="stop servers started with --background LOG (ray down leaves them running)",
        description="Stop the process groups that `mlflow --background LOG` recorded in LOG.pid.",
    )
    stop.add_argument("logs", nargs="+", type=Path, metavar="LOG", help="the --background LOG")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Check, print, then exec the server (the process becomes ``mlflow server``)."""
    args = build_parser().parse_args(argv)
    if args.server == "stop":
        return stop_detached(args.logs)
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
