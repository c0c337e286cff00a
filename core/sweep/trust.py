"""Which results folders this user's clarlab wrote, so that ``--resume`` trusts only those.

``--resume`` and ``--report-only`` hand a results folder to Tune, whose experiment state
and checkpoints are pickles: unpickling runs whatever code the pickle's author chose. A
results folder copied from another machine or user, or unpacked from an archive, is
therefore as dangerous as a script from the same place, and must not be resumed just
because it sits under ``results/``.

So every state file clarlab writes (``sweep.json``, a search's ``search.json``) is
recorded in a registry that lives outside every results folder and belongs to this user:
``$CLARLAB_STATE_DIR/sweeps.json``, else ``$XDG_STATE_HOME/clarlab/sweeps.json``, else
``~/.local/state/clarlab/sweeps.json`` (folder 0700, file 0600, written atomically under
a lock). An entry maps the state file's resolved path to the random ``trust_token`` the
file carries and the SHA-256 of the file's bytes as written. :func:`ensure_trusted`
refuses a folder when

- the registry has no entry for its state file (a copied or moved folder, a folder from
  another user or machine, or a sweep written before clarlab kept the registry),
- the file's token differs from the entry's (another sweep's file put in its place), or
- the file's bytes changed since clarlab wrote them (an edited trial list, a redirected
  ``experiment_path``).

What it does not prove: that the pickles under ``tune/`` are the ones Tune wrote. Anyone
who can write into a folder this user created can also replace those; the registry keeps
out folders that came from elsewhere, not a local attacker with write access.

The override is explicit: ``CLARLAB_TRUST_RESULTS=1`` or :func:`trust_results` (the
CLI's ``--trust-results``). It records the folder, so later resumes need no override.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.sweep.errors import SweepError

TRUST_ENV = "CLARLAB_TRUST_RESULTS"
STATE_DIR_ENV = "CLARLAB_STATE_DIR"
REGISTRY_FILE = "sweeps.json"
TOKEN_KEY = "trust_token"
_REGISTRY_VERSION = 1

_override = False  # set by trust_results(): the CLI's --trust-results


class UntrustedResultsError(SweepError):
    """A results folder that this user's clarlab did not write (or that changed since)."""


def new_token() -> str:
    """A fresh random token for a new state file (128 bits: not guessable, not reused)."""
    return secrets.token_hex(16)


def registry_path() -> Path:
    """The per-user registry: outside every results folder, so a copied folder cannot bring
    its own entry along."""
    explicit = os.environ.get(STATE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser() / REGISTRY_FILE
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "clarlab" / REGISTRY_FILE


def trust_results(enabled: bool = True) -> None:
    """Trust the results folder of the next ``--resume``/``--report-only`` even if this
    user's clarlab did not write it (the CLI's ``--trust-results``)."""
    global _override
    _override = enabled


def _override_requested() -> bool:
    return _override or os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def _key(state_file: Path) -> str:
    return str(state_file.expanduser().resolve())


def _read_token(raw: bytes) -> str | None:
    with contextlib.suppress(ValueError, AttributeError):
        token = json.loads(raw).get(TOKEN_KEY)
        return token if isinstance(token, str) else None
    return None


@contextlib.contextmanager
def _locked(registry: Path) -> Iterator[None]:
    """An exclusive lock across processes on this node: two sweeps recording at once must
    not lose each other's entry in the read-modify-write of the registry."""
    registry.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(registry.with_name(registry.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _load(registry: Path) -> tuple[dict[str, Any], str | None]:
    """The registry's entries and, when they cannot be relied on, why not.

    A registry that another user owns, or that others can write, could hold entries this
    user never made: it is read as empty (nothing is trusted), and the reason is shown."""
    try:
        info = registry.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return {}, None
    if not stat.S_ISREG(info.st_mode):
        return {}, f"{registry} is not a regular file"
    if info.st_uid != os.getuid():
        return {}, f"{registry} belongs to uid {info.st_uid}, not to you (uid {os.getuid()})"
    if info.st_mode & 0o022:
        return {}, f"{registry} is writable by others (mode {stat.S_IMODE(info.st_mode):o})"
    try:
        raw = json.loads(registry.read_text())
        folders = raw["folders"]
        if not isinstance(folders, dict):
            raise TypeError("folders is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as error:
        return {}, f"{registry} is unreadable ({error})"
    return folders, None


def _folder_problem(folder: Path) -> str | None:
    """Why the registry's folder cannot be relied on, if it cannot: whoever may write
    there can replace the registry with one of their own."""
    try:
        info = folder.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if info.st_uid != os.getuid():
        return f"{folder} belongs to uid {info.st_uid}, not to you (uid {os.getuid()})"
    if info.st_mode & 0o022:
        return f"{folder} is writable by others (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def _write(registry: Path, folders: dict[str, Any]) -> None:
    """Replace the registry atomically (a crash leaves the old one), readable only by you."""
    handle, temporary = tempfile.mkstemp(dir=registry.parent, prefix=".sweeps-", suffix=".json")
    try:
        with os.fdopen(handle, "w") as stream:  # mkstemp creates the file 0600
            json.dump({"version": _REGISTRY_VERSION, "folders": folders}, stream, indent=1)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, registry)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def record_trusted(state_file: Path) -> Path:
    """Record ``state_file`` (just written by this process) as this user's: its resolved
    path, the token it carries and the SHA-256 of its bytes. Returns the registry path.

    Called by whatever writes a state file, right after the atomic rename, so every state
    file clarlab writes is trusted on the next resume and nothing else is."""
    registry = registry_path()
    raw = Path(state_file).read_bytes()
    entry = {
        "token": _read_token(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "recorded": time.time(),
    }
    with _locked(registry):
        folders, problem = _load(registry)
        if problem is not None and registry.exists():
            # Not trustworthy as it stands: start a fresh one of our own rather than add
            # to it (its entries are not carried over).
            aside = registry.with_name(f"{registry.name}.untrusted-{int(time.time())}")
            with contextlib.suppress(OSError):
                os.replace(registry, aside)
            print(f"clarlab: set aside {registry} ({problem}) as {aside}", file=sys.stderr)
        folders[_key(state_file)] = entry
        _write(registry, folders)
    return registry


def _why_untrusted(state_file: Path) -> str | None:
    """``None`` if the registry vouches for ``state_file``, else the reason in words."""
    registry = registry_path()
    key = _key(state_file)
    raw = Path(state_file).read_bytes()
    folders, problem = _load(registry)
    problem = _folder_problem(registry.parent) or problem
    if problem is not None:
        return f"the registry cannot be relied on: {problem}"
    entry = folders.get(key)
    token = _read_token(raw)
    if not isinstance(entry, dict):
        where = f"{registry} has no entry for {key}"
        if token is None:
            return (
                f"{where}, and the file carries no {TOKEN_KEY}: it was written before "
                f"clarlab recorded the sweeps it creates, or by something else"
            )
        return (
            f"{where}: clarlab did not create this folder here as this user (uid "
            f"{os.getuid()}); it was copied or moved from another folder, user or machine"
        )
    if entry.get("token") != token:
        return (
            f"token mismatch: {key} carries {TOKEN_KEY} {token!r}, but the entry in "
            f"{registry} expects {entry.get('token')!r} (another sweep's file was put here)"
        )
    digest = hashlib.sha256(raw).hexdigest()
    if entry.get("sha256") != digest:
        return (
            f"{key} changed since clarlab wrote it (SHA-256 {digest[:16]}..., the entry in "
            f"{registry} records {str(entry.get('sha256'))[:16]}...): it was edited"
        )
    return None


def ensure_trusted(run_dir: Path, state_file: str = "sweep.json") -> None:
    """Refuse to continue from ``run_dir`` unless this user's clarlab wrote its state file
    (see the module docstring); call it before anything loads Tune's pickled state.

    With the override (``CLARLAB_TRUST_RESULTS=1`` or :func:`trust_results`) an untrusted
    folder is let through once, said on stderr, and recorded, so that the next resume of
    the same folder needs no override."""
    path = Path(run_dir) / state_file
    reason = _why_untrusted(path)
    if reason is None:
        return
    if _override_requested():
        registry = record_trusted(path)
        print(
            f"clarlab: trusting {Path(run_dir).resolve()} on request ({reason}); recorded in "
            f"{registry}, so later resumes of this folder need no override",
            file=sys.stderr,
            flush=True,
        )
        return
    raise UntrustedResultsError(
        f"refusing to resume or report on {Path(run_dir).resolve()}: {reason}. Resuming "
        f"loads Tune's experiment state and checkpoints from this folder, which are "
        f"pickles, and unpickling runs whatever code their author put in them. If you "
        f"trust where this folder came from, rerun with --trust-results (or "
        f"{TRUST_ENV}=1); clarlab then records it in {registry_path()}"
    )
