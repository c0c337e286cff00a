"""One Ray session per sweep: starting or joining Ray, the tracking server checked
before it, the address trials log to, and the Tune switches every sweep sets."""

from __future__ import annotations

import ipaddress
import os
from typing import TextIO
from urllib.parse import urlparse

from core.sweep.request import SweepRequest
from core.sweep.trainable import trial_environment


def check_tracking_before_ray(tracking_uri: str, request: SweepRequest) -> bool:
    """Check the tracking server before Ray starts (one request, a few seconds; MLflow's
    own retries took minutes to fail, after Ray had started). True when checked.

    A loopback URI given with ``--address`` waits: on a cluster of several nodes the
    driver hands trials the head's address instead (:func:`reachable_tracking_uri`), and
    only Ray knows that, so that address is checked once Ray is connected, still before
    the parent run or any trial starts.
    """
    from core.tracking import check_tracking_server

    host = urlparse(tracking_uri).hostname
    if request.address and host and is_loopback(host):
        return False
    check_tracking_server(tracking_uri)
    return True


def quiet_trial_errors() -> None:
    """Keep Tune from printing every failed trial's traceback (about 80 lines) and its
    own blocks to the terminal. The progress line and the summary name each failure's
    cause in one line; the traceback stays in the trial's ``error.txt`` (named on that
    line) and in its MLflow run (the ``clarlab.error`` tag).

    Tune logs the traceback unless ``TUNE_PRINT_ALL_TRIAL_ERRORS=0``. Its newer output
    engine also prints a configuration box at the start and an "errored after ..." block
    per failure whatever ``RunConfig.verbose`` says; ``RAY_AIR_NEW_OUTPUT=0`` selects the
    engine that honours ``verbose=0``. Both are Tune's own switches, read when a run of
    the experiment starts; values the user exported win."""
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def allow_sparse_metrics() -> None:
    """Let trials report the test metric only at evaluation epochs.

    Tune refuses a result without the metric that its scheduler or searcher watches (the
    whole run fails), but :func:`core.train.run_loop` evaluates every ``eval_every``
    epochs and reports every epoch. ASHA skips results without its metric and the
    search's :class:`~core.sweep.search_plan.Searcher` does too; the rungs fall on
    evaluation epochs, so no decision is lost."""
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")


# Ray's switch for "this machine is the whole cluster": with it off, a node takes the
# loopback address as its own, and Ray 2.60's servers bind their node's address (the GCS,
# the raylet, the object manager, the workers, the runtime-env agent): nothing listens
# beyond this machine. Named for the platforms where it is the default.
_LOOPBACK_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def secure_ray_environment(local: bool) -> None:
    """Token authentication as Ray 2.60 sets it up (on for a cluster ``ray.init`` starts,
    with a token it generates in ``~/.ray/auth_token`` unless ``RAY_AUTH_TOKEN_PATH`` or
    ``RAY_AUTH_TOKEN`` gives one), usage statistics off,
    and for a cluster this sweep starts on its own machine, every Ray port on loopback.
    Values the user exported win, except ``RAY_AUTH_MODE=disabled``, which is refused:
    anyone who reaches an unauthenticated Ray can run code as this user (CVE-2023-48022)."""
    if os.environ.get("RAY_AUTH_MODE", "token") != "token":
        from core.sections import ConfigError

        raise ConfigError(
            f"RAY_AUTH_MODE={os.environ['RAY_AUTH_MODE']!r}: clarlab runs Ray with token "
            f"authentication only (an unauthenticated Ray runs anyone's code); unset it, "
            f"or set it to 'token'"
        )
    # Left unset, Ray 2.60 turns token authentication on itself for a cluster that
    # ray.init starts, and for a connection wherever a token is found; setting it here
    # would come too late for this process (Ray reads it into its config at import).
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if local:
        os.environ.setdefault(_LOOPBACK_NODE_ENV, "0")
        if os.environ[_LOOPBACK_NODE_ENV] == "0":
            # Read by this process's Ray at import, which is done by now: the driver
            # resolves the node's address for the processes it starts from this value.
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """``ray.init`` with the trial environment (``core.sweep.trainable.TRIAL_ENV``): a
    running cluster at ``address`` (e.g. ``"auto"``) or a new local one with ``num_cpus``,
    token-authenticated and, when local, on loopback (:func:`secure_ray_environment`).

    Without an address, Ray's own ``ray.init()`` joins the last cluster started on this
    machine (a notebook's, another sweep's) if one is running: a sweep asked to run
    locally would then share, and be sized by, a cluster it did not start, and refuse
    ``--num-cpus``. ``address="local"`` is Ray's way to start a new one regardless."""
    import ray

    secure_ray_environment(local=not address)
    runtime_env = {"env_vars": trial_environment()}
    if address:
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
    else:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env=runtime_env,
        )


def start_ray(request: SweepRequest) -> dict[str, float] | None:
    """Connect to ``--address`` or start a local Ray; the totals that bound the request.

    A remote cluster may still grow (autoscaler), so its totals are not used to refuse a
    request; a local cluster's are final.
    """
    import ray

    # Every epoch checkpoints with num_to_keep=1, so Tune snapshots its state often on
    # purpose (a resume must see the latest checkpoint); its warning about that is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not ray.is_initialized():
        init_ray(address=request.address, num_cpus=request.num_cpus)
    if request.address:
        return None
    return {key: float(value) for key, value in ray.cluster_resources().items()}


_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def reachable_tracking_uri(tracking_uri: str, stream: TextIO) -> str:
    """A tracking URI every node of the running Ray cluster can reach.

    Trials log from the node they run on. On a cluster of more than one node,
    ``http://localhost:5000`` names each worker itself, where no MLflow server listens,
    so a loopback host is replaced by the address of this driver's node (the head, under
    ``ray submit``), and the rewrite is said once. A local file store on a multi-node
    cluster cannot be rewritten; that gets a warning.
    """
    import ray

    alive = [node for node in ray.nodes() if node.get("Alive")]
    if len(alive) <= 1:
        return tracking_uri
    parsed = urlparse(tracking_uri)
    if parsed.scheme in ("http", "https") and parsed.hostname and is_loopback(parsed.hostname):
        head = ray.util.get_node_ip_address()
        shown_head = f"[{head}]" if ":" in head else head
        userinfo, _, _ = parsed.netloc.rpartition("@")
        netloc = f"{userinfo + '@' if userinfo else ''}{shown_head}"
        netloc += f":{parsed.port}" if parsed.port else ""
        rewritten = parsed._replace(netloc=netloc).geturl()
        print(
            f"tracking: {parsed.scheme}://{parsed.hostname} is each node itself on this "
            f"{len(alive)}-node cluster; trials log to {parsed.scheme}://{shown_head}"
            f"{':' + str(parsed.port) if parsed.port else ''} (this node) instead",
            file=stream,
            flush=True,
        )
        return rewritten
    if parsed.scheme in ("", "file", "sqlite"):
        print(
            f"warning: MLflow store {tracking_uri} is a file on this machine and the cluster "
            f"has {len(alive)} nodes; trials on other nodes cannot write to it. Pass "
            f"--tracking-uri http://<head>:5000 (the MLflow server of cluster.yaml) or set "
            f"MLFLOW_TRACKING_URI.",
            file=stream,
            flush=True,
        )
    return tracking_uri
