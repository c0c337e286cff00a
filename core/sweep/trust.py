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

Tune's own state (``tune/``: ``tuner.pkl``, the experiment state whose trials are
pickles, the searcher's state, each trial's ``params.pkl``) is covered too: when a fit ends
or is interrupted, :func:`record_tune_state` adds the SHA-256 of each of those files to the
state file's entry, and :func:`ensure_tune_trusted` checks them before Tune restores
anything: a replaced, added or removed file is refused. Checkpoint folders
(``checkpoint_*``) are left out: clarlab loads them with ``torch.load(weights_only=True)``,
which runs no code, and hashing them would cost a large sweep minutes. A fit killed before
it could record (``kill -9``, a power cut) leaves digests that no longer match, and Tune
state kept under a shared ``--storage-path`` can be written by others: both need the
override to resume.

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
        previous = folders.get(_key(state_file))
        if isinstance(previous, dict) and TUNE_KEY in previous:
            entry[TUNE_KEY] = previous[TUNE_KEY]  # Tune's state changes only during a fit
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


# --- Tune's state under tune/ ---------------------------------------------------------------
TUNE_KEY = "tune_sha256"


def _restored_by_tune(root: Path, path: Path) -> bool:
    """Whether Tune reads ``path`` back on a restore in a way that can run code: the
    experiment folder's own files (``tuner.pkl``, the experiment and searcher state, whose
    trials are pickles) and any pickle below. The trials' logs (``result.json``,
    ``progress.csv``) are data Tune keeps appending to, read as JSON and CSV."""
    return path.parent == root or path.suffix == ".pkl"


def tune_digests(experiment_path: Path) -> dict[str, str]:
    """SHA-256 of the files of Tune's experiment folder that a restore unpickles, by
    relative path; a link is recorded as its target (it is never followed), checkpoint
    folders are skipped."""
    root = Path(experiment_path)
    digests: dict[str, str] = {}
    for folder, names, files in os.walk(root, followlinks=False):
        names[:] = sorted(name for name in names if not name.startswith("checkpoint_"))
        links = [name for name in names if os.path.islink(os.path.join(folder, name))]
        for name in sorted(files) + links:
            path = Path(folder) / name
            if not _restored_by_tune(root, path) and not path.is_symlink():
                continue
            relative = str(path.relative_to(root))
            if path.is_symlink():
                digests[relative] = f"link:{os.readlink(path)}"
                continue
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            digests[relative] = digest.hexdigest()
    return digests


def record_tune_state(state_file: Path, experiment_path: str) -> None:
    """Add the digests of Tune's state to ``state_file``'s registry entry (a fit just ended
    or was interrupted); a remote storage path cannot be hashed here and is left out."""
    if "://" in experiment_path or not Path(experiment_path).is_dir():
        return
    registry = registry_path()
    digests = tune_digests(Path(experiment_path))
    with _locked(registry):
        folders, problem = _load(registry)
        entry = folders.get(_key(state_file))
        if problem is not None or not isinstance(entry, dict):
            return  # nothing of ours to add to: the next resume needs the override anyway
        entry[TUNE_KEY] = digests
        _write(registry, folders)


def _why_tune_untrusted(state_file: Path, run_dir: Path, experiment_path: str) -> str | None:
    """``None`` if Tune's state is as clarlab last recorded it, else the reason."""
    inside = "://" not in experiment_path and Path(experiment_path).resolve().is_relative_to(
        Path(run_dir).resolve()
    )
    if not inside:
        return (
            f"Tune's state is kept in {experiment_path}, outside the results folder (a shared "
            f"storage path others may write)"
        )
    if not Path(experiment_path).is_dir():
        return None  # Tune saved nothing: the sweep starts its trials afresh
    folders, _ = _load(registry_path())
    recorded = (folders.get(_key(state_file)) or {}).get(TUNE_KEY)
    if not isinstance(recorded, dict):
        return (
            f"no digests of {experiment_path} were recorded (the sweep's process ended before "
            f"it could record them, e.g. killed)"
        )
    found = tune_digests(Path(experiment_path))
    changed = sorted(
        name for name in set(found) | set(recorded) if found.get(name) != recorded.get(name)
    )
    if changed:
        shown = ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
        return f"Tune's state changed since clarlab recorded it: {shown}"
    return None


def ensure_tune_trusted(
    run_dir: Path, experiment_path: str, state_file: str = "sweep.json"
) -> None:
    """Refuse to restore Tune's state unless it is what clarlab recorded (see the module
    docstring); the override lets it through once, said on stderr, and records it."""
    path = Path(run_dir) / state_file
    reason = _why_tune_untrusted(path, run_dir, experiment_path)
    if reason is None:
        return
    if _override_requested():
        record_tune_state(path, experiment_path)
        print(f"clarlab: trusting Tune's state on request ({reason})", file=sys.stderr, flush=True)
        return
    raise UntrustedResultsError(
        f"refusing to resume or report on {Path(run_dir).resolve()}: {reason}. Tune's state "
        f"is pickled, and unpickling runs whatever code its author put in it. If you trust "
        f"it, rerun with --trust-results (or {TRUST_ENV}=1)"
    )
