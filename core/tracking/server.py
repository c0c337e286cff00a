"""Reaching a tracking server: bounded retries, a quick check before work starts, and
errors that name the server, the cause and the fix.

A sweep checks its server before Ray starts (one request, a few seconds; MLflow's own
retries took minutes to fail, after Ray had started), and every MLflow call of a trial
or of the sweep's report runs inside :func:`reaching`, which turns an unreachable server
into a :class:`TrackingServerError` instead of MLflow's generic error.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlparse

import requests

from core.sections import ConfigError

# MLflow retries a failed HTTP call (connection refused, no answer, HTTP 429 and 5xx) with
# exponential backoff, by default 7 times at factor 2 and 120 s per attempt: a call to a
# dead server fails after about 264 s, and a trial logs several calls as it fails. Here:
# 6 retries at factor 2, that is sleeps of 0, 4, 8, 16, 32 and 64 s (plus up to 1 s of
# jitter each), so a call made as the server goes away is tried for the last time about
# two minutes later. A server restarted within that (a restart on a loaded head took 30 s
# and more) loses nothing; a dead one fails a call in about two minutes. A server that
# accepts connections but never answers costs 30 s per attempt (MLflow's 120 s would make
# that 16 minutes). MLflow reads these at every request; values the user exported win.
HTTP_RETRY_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "6",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
# After a call to a server spent its retries, later calls of this process ask the server
# once, without retries, before trying: a trial that could not log then ends its run and
# fails in seconds, not in one more minute per call (end the run, look for it, ...).
PROBE_AFTER_OUTAGE_S = 300.0
PROBE_TIMEOUT_S = 5.0
_UNREACHABLE_SINCE: dict[str, float] = {}

_HOW_TO_REACH = (
    "start it (`make mlflow-server`), check --tracking-uri (or MLFLOW_TRACKING_URI), or, "
    "for the server on a cluster's head, open the tunnel first (`ray attach cluster.yaml "
    "-p 5000`)"
)


def is_http(tracking_uri: str) -> bool:
    return urlparse(tracking_uri).scheme in ("http", "https")


def bound_http_retries() -> None:
    """Apply :data:`HTTP_RETRY_ENV` to this process, keeping values the user exported."""
    for name, value in HTTP_RETRY_ENV.items():
        os.environ.setdefault(name, value)


def shown_uri(tracking_uri: str) -> str:
    """The URI without a password (it goes into error messages, run tags and logs)."""
    parsed = urlparse(tracking_uri)
    if not parsed.password:
        return tracking_uri
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return parsed._replace(netloc=netloc).geturl()


CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def take_uri_credentials(tracking_uri: str | None) -> tuple[str | None, bool]:
    """``tracking_uri`` without its ``user:password@``, which moves into this process's
    ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` (MLflow's documented way to
    pass credentials; processes started from here, such as a local Ray cluster's trials,
    inherit them). From here on no message, run tag, state file or Tune parameter can
    carry the password, because nothing downstream holds it. Returns the URI and whether
    credentials were moved."""
    if not tracking_uri or "://" not in tracking_uri:
        return tracking_uri, False
    parsed = urlparse(tracking_uri)
    if parsed.username is None and parsed.password is None:
        return tracking_uri, False
    os.environ[CREDENTIAL_ENV[0]] = unquote(parsed.username or "")
    if parsed.password is not None:
        os.environ[CREDENTIAL_ENV[1]] = unquote(parsed.password)
    host = parsed.netloc.rpartition("@")[2]
    return parsed._replace(netloc=host).geturl(), True


_USERINFO_PASSWORD = re.compile(r"(://[^/@\s:]+):[^/@\s]+@")


def mask_secrets(text: str) -> str:
    """``text`` with the password of every URI in it masked (``http://user:***@host``):
    a command line goes into run tags and state files."""
    return _USERINFO_PASSWORD.sub(r"\1:***@", text)


class TrackingServerError(ConfigError):
    """A tracking server that cannot be reached, or that refuses the request.

    It is a :class:`~core.config.ConfigError`: raised by :func:`check_tracking_server`
    before a sweep starts, the command line shows it on one line and exits 2. A trial
    raises it too, in place of MLflow's error, so that its error names the cause (and not,
    say, a parent run that "does not exist" because it could not be read).
    """

    def __init__(
        self, message: str, uri: str = "", reason: str = "", unreachable: bool = True
    ) -> None:
        super().__init__(message)
        self.uri, self.reason, self.unreachable = uri, reason, unreachable

    def __reduce__(self) -> tuple[Any, ...]:
        # Ray pickles a trial's exception for the driver; the default pickling would call
        # __init__ with the message only and lose the fields.
        return (type(self), (str(self), self.uri, self.reason, self.unreachable))

    @classmethod
    def build(
        cls, tracking_uri: str, reason: str, what: str | None = None, unreachable: bool = True
    ) -> TrackingServerError:
        """``MLflow tracking server URI cannot be reached (REASON) while WHAT: FIX``."""
        shown = shown_uri(tracking_uri)
        problem = "cannot be reached" if unreachable else "refused the request"
        during = f" while {what}" if what else ""
        return cls(
            f"MLflow tracking server {shown} {problem} ({reason}){during}: "
            f"{_fix_for(tracking_uri, reason, unreachable)}",
            uri=shown,
            reason=reason,
            unreachable=unreachable,
        )


def _fix_for(tracking_uri: str, reason: str, unreachable: bool) -> str:
    if unreachable:
        return _HOW_TO_REACH
    parsed = urlparse(tracking_uri)
    if "Host header" in reason:
        host = f"{parsed.hostname}:{parsed.port}" if parsed.port else str(parsed.hostname)
        return (
            f"the server does not accept the host name {host}; start it with --allowed-hosts "
            f"naming it (`make mlflow-server` names its own host and localhost)"
        )
    if reason.startswith("HTTP 401"):
        return "it asks for credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    if reason.startswith("HTTP 404"):
        return "no MLflow REST API at that address; check the port and path of --tracking-uri"
    return "see the server's log"


def _connection_reason(error: BaseException) -> str:
    """A short name for why an HTTP connection failed ('connection refused', ...)."""
    if isinstance(error, requests.exceptions.Timeout):
        return "no answer in time"
    text = str(error)
    for needles, reason in (
        (("Connection refused",), "connection refused"),
        (("NameResolutionError", "Name or service not known", "nodename nor servname",
          "Temporary failure in name resolution"), "host name not found"),
        (("No route to host",), "no route to host"),
        (("Network is unreachable",), "network unreachable"),
        (("SSLError", "CERTIFICATE_VERIFY_FAILED"), "TLS handshake failed"),
        (("RemoteDisconnected", "Connection aborted", "Connection reset"),
         "the connection was closed"),
    ):  # fmt: skip
        if any(needle in text for needle in needles):
            return reason
    return "connection failed"


def unreachable_reason(error: BaseException) -> str | None:
    """Why a tracking call failed when the cause is that the server could not be reached
    ('connection refused', 'no answer in time', 'HTTP 503 on every retry'), else ``None``
    (the server answered: a missing run, a bad request).

    MLflow raises its own exception for both; the HTTP error is in its chain."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TrackingServerError):
            return current.reason if current.unreachable else None
        if isinstance(current, requests.exceptions.RetryError):
            status = re.search(r"too many (\d{3}) error responses", str(current))
            return f"HTTP {status.group(1)} on every retry" if status else "no answer after retries"
        if isinstance(current, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return _connection_reason(current)
        current = current.__cause__ or current.__context__
    return None


def is_unreachable_error(text: str | None) -> bool:
    """Whether an error's text (a trial's error summary) says the tracking server could not
    be reached: such a trial did not fail on its own, and ``--resume`` reruns it."""
    if not text:
        return False
    if "TrackingServerError" in text and "cannot be reached" in text:
        return True
    # MLflow's own error, from a call made outside `reaching` (or an older clarlab): the
    # summary of a long error may end before "Failed to establish a new connection".
    return "Max retries exceeded with url" in text or "Failed to establish a new connection" in text


def _probe_credentials() -> dict[str, Any]:
    """What MLflow's client sends to a server: basic auth or a token, and TLS settings."""
    from mlflow.environment_variables import (
        MLFLOW_TRACKING_INSECURE_TLS,
        MLFLOW_TRACKING_PASSWORD,
        MLFLOW_TRACKING_SERVER_CERT_PATH,
        MLFLOW_TRACKING_TOKEN,
        MLFLOW_TRACKING_USERNAME,
    )

    options: dict[str, Any] = {}
    username, password = MLFLOW_TRACKING_USERNAME.get(), MLFLOW_TRACKING_PASSWORD.get()
    if username and password:
        options["auth"] = (username, password)
    elif MLFLOW_TRACKING_TOKEN.get():
        options["headers"] = {"Authorization": f"Bearer {MLFLOW_TRACKING_TOKEN.get()}"}
    if MLFLOW_TRACKING_INSECURE_TLS.get():
        options["verify"] = False
    elif MLFLOW_TRACKING_SERVER_CERT_PATH.get():
        options["verify"] = MLFLOW_TRACKING_SERVER_CERT_PATH.get()
    return options


def check_tracking_server(tracking_uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise :class:`TrackingServerError` unless the server at ``tracking_uri`` answers
    MLflow's REST API within ``timeout_s`` (one request, no retries). A local store
    (``sqlite:``, a folder) needs no server and passes.

    It asks the experiments API rather than ``/health``: MLflow's check of the Host header
    (``--allowed-hosts``) and its authentication guard the API only, and a server that
    answers ``/health`` but refuses the API would fail every trial.
    """
    if not is_http(tracking_uri):
        return
    url = f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/experiments/search"
    try:
        response = requests.get(
            url, params={"max_results": 1}, timeout=timeout_s, **_probe_credentials()
        )
    except requests.exceptions.RequestException as error:
        raise TrackingServerError.build(tracking_uri, _connection_reason(error)) from None
    if response.status_code == 200:
        return
    said = " ".join(response.text.split())
    if "<html" in said[:200].lower():  # a proxy's or a web server's page: its title says it
        title = re.search(r"<title>(.*?)</title>", said, re.IGNORECASE)
        said = title.group(1) if title else ""
    reason = f"HTTP {response.status_code}" + (f": {said[:160]}" if said else "")
    raise TrackingServerError.build(
        tracking_uri, reason, unreachable=response.status_code >= 500
    ) from None


@contextmanager
def reaching(tracking_uri: str, what: str) -> Iterator[None]:
    """Make MLflow calls to ``tracking_uri``; when the server cannot be reached, raise
    :class:`TrackingServerError` naming the server, the cause and ``what`` was being done.

    After a call of this process found the server unreachable, the block starts with one
    quick request (:func:`check_tracking_server`) and fails at once if the server is still
    away. A local store passes through untouched.
    """
    if not is_http(tracking_uri):
        yield
        return
    since = _UNREACHABLE_SINCE.get(tracking_uri)
    if since is not None and time.monotonic() - since < PROBE_AFTER_OUTAGE_S:
        try:
            check_tracking_server(tracking_uri)
        except TrackingServerError as error:
            raise TrackingServerError.build(
                tracking_uri, error.reason, what, unreachable=error.unreachable
            ) from None
        _UNREACHABLE_SINCE.pop(tracking_uri, None)
    try:
        yield
    except TrackingServerError:
        raise
    except Exception as error:
        reason = unreachable_reason(error)
        if reason is None:
            raise
        _UNREACHABLE_SINCE[tracking_uri] = time.monotonic()
        raise TrackingServerError.build(tracking_uri, reason, what) from error


# A server that dies while answering a POST (create a run, log a batch) leaves a broken
# read, which MLflow's retries do not repeat (urllib3 retries only idempotent methods on
# read errors). Such a call is made once more when the server answers again.
_BROKEN_READ_MARKERS = (
    "IncompleteRead",
    "Connection broken",
    "RemoteDisconnected",
    "Connection aborted",
    "ProtocolError",
)
WAIT_FOR_SERVER_S = 150.0  # about MLflow's own retry budget (HTTP_RETRY_ENV)


def wait_for_server(tracking_uri: str, seconds: float = WAIT_FOR_SERVER_S) -> bool:
    """Poll the server until it answers (True) or ``seconds`` pass (False)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            check_tracking_server(tracking_uri)
            return True
        except TrackingServerError:
            if time.monotonic() > deadline:
                return False
            time.sleep(2.0)


def once_more_after_broken_read(
    tracking_uri: str,
    call: Callable[[], Any],
    already_done: Callable[[], Any] | None = None,
) -> Any:
    """``call()``; after a broken read from an HTTP server, wait until the server answers
    and call again, unless ``already_done()`` finds that the first call took effect (a
    run created before the answer broke) and returns that instead."""
    try:
        return call()
    except Exception as error:
        text = f"{error!r} {error}"
        if not is_http(tracking_uri) or not any(m in text for m in _BROKEN_READ_MARKERS):
            raise
        if not wait_for_server(tracking_uri):
            raise
        done = already_done() if already_done is not None else None
        return done if done is not None else call()
