"""Fetch a dataset's official archives and extract them, safely and atomically.

- A download streams into ``<name>.part`` and is renamed only once its size and checksum
  check out, so an interrupted download never leaves a file that looks complete. A later
  attempt resumes the ``.part`` file with an HTTP Range request, or restarts it when the
  server does not honour ranges.
- A checksum or size mismatch removes the partial file and raises, naming the URL and
  both values.
- Extraction refuses archive members that would land outside the target folder (absolute
  paths, ``..``, device files, members written through a link, links that resolve
  outside through other links, in the archive or already extracted) before writing
  anything, and writes into a staging folder that is renamed into place only when every
  archive is extracted. The checks are this module's own; tarfile's ``data`` filter
  (whose known bypasses are fixed only in newer Pythons) is a second layer.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import stat
import tarfile
import unicodedata
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NoReturn

from tqdm.auto import tqdm

from core.data.base import DatasetError, DatasetNotFoundError, DatasetSpec, Resource, file_lock

_BLOCK = 1 << 20
_USER_AGENT = "clarlab-data/0.1"


class DownloadError(DatasetError):
    """A download or extraction failed; the message names the URL or archive member."""


def _digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(part: Path, url: str, sha256: str | None, md5: str | None, size: int | None) -> None:
    """Check size and checksum of a finished download; remove it on any mismatch."""
    problems = []
    actual_size = part.stat().st_size
    if size is not None and actual_size != size:
        problems.append(f"size {actual_size} bytes, expected {size}")
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected and not problems:
            actual = _digest(part, algorithm)
            if actual.lower() != expected.lower():
                problems.append(f"{algorithm} {actual}, expected {expected}")
    if problems:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"download of {url} is corrupt ({'; '.join(problems)}); the partial file was "
            f"removed, retry the download (if it persists, the upstream file changed)"
        )


def download_file(
    url: str,
    destination: Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    progress: bool = True,
    attempts: int = 3,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``destination`` with resume, verification and an atomic rename.

    A complete ``destination`` is trusted (it was verified before being renamed); a
    ``.part`` file left by an interrupted run is resumed. Connection drops are retried up
    to ``attempts`` times, each retry resuming where the previous one stopped.
    """
    destination = Path(destination)
    if destination.is_file():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    last_error: Exception | None = None
    for _ in range(attempts):
        try:
            total = _fetch_into(url, part, progress=progress, timeout=timeout)
        except urllib.error.HTTPError as error:
            raise DownloadError(
                f"cannot download {url}: HTTP {error.code} {error.reason}"
            ) from None
        except urllib.error.URLError as error:  # no route, DNS, refused: retrying won't help
            raise DownloadError(f"cannot reach {url}: {error.reason}") from None
        except (http.client.HTTPException, OSError) as error:  # dropped mid-transfer
            last_error = error
            continue
        _verify(part, url, sha256, md5, size if size is not None else total)
        os.replace(part, destination)
        return destination
    raise DownloadError(
        f"download of {url} was interrupted {attempts} times ({last_error}); the partial "
        f"file {part} is kept and the next attempt resumes it"
    )


def _fetch_into(url: str, part: Path, progress: bool, timeout: float) -> int | None:
    """One HTTP attempt: append to ``part`` (Range) or rewrite it. Returns the full size.

    Raises on a short read, so the caller retries and the next attempt resumes.
    """
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing left to fetch: the .part is whole
            return None
        raise
    with response:
        resumed = response.status == 206
        if not resumed:
            have = 0  # the server sent the whole file: restart the .part
        length = response.headers.get("Content-Length")
        remaining = int(length) if length is not None else None
        total = have + remaining if remaining is not None else None
        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True,
                   desc=part.name.removesuffix(".part"), disable=not progress)  # fmt: skip
        received = 0
        with part.open("ab" if resumed else "wb") as handle, bar:
            while block := response.read(_BLOCK):
                handle.write(block)
                received += len(block)
                bar.update(len(block))
        if remaining is not None and received < remaining:
            raise http.client.IncompleteRead(b"", remaining - received)
    return total


# --- extraction -------------------------------------------------------------------------
# Every member is checked against a model of what the target folder will hold before
# anything is written; tarfile's "data" filter re-checks tar members as a second layer.
# The model is needed because a lexical check of one member at a time misses link
# chains: ``x -> .`` is harmless alone, and ``x/x/y -> ../../`` lexically names the top
# (``x/x/../..``), but ``x/x`` is the top itself, so the link points two levels above it.

_MAX_LINK_HOPS = 40  # as the kernel's limit on links followed in one path (ELOOP)
_MAX_LINK_TEXT = 4096  # a zip symlink's target is its content: refuse a large one unread


def _member_path(name: str, strip: str | None, archive: Path) -> PurePosixPath | None:
    """The member's path relative to the target, ``None`` to skip it; raises if unsafe."""
    path = PurePosixPath(name)
    first = path.parts[0] if path.parts else ""
    if path.is_absolute() or ".." in path.parts or name.startswith("\\") or ":" in first:
        raise DownloadError(
            f"archive {archive.name} has a member {name!r} that would be written outside "
            f"the target folder; refusing to extract it (the archive is not trustworthy)"
        )
    if strip is None:
        return path
    if path.parts[:1] != (strip,):
        return None  # outside the archive's dataset folder (e.g. a global header)
    rest = PurePosixPath(*path.parts[1:]) if len(path.parts) > 1 else None
    return rest


@dataclass(frozen=True)
class _Entry:
    """What a path of the target folder is (or will be): dir, file, symlink or other."""

    kind: str
    link: str | None = None  # a symlink's target, as written in the link


@dataclass(frozen=True)
class _Member:
    """One member to write: where (relative to the target) and what."""

    name: str  # as in the archive, for messages
    parts: tuple[str, ...]
    kind: str  # "dir", "file", "symlink" or "hardlink"
    link: str | None = None  # a symlink's text; a hard link's target path (in the target)


class _LinkEscape(Exception):
    """A link resolution left the target folder."""


def _fold(parts: tuple[str, ...]) -> tuple[str, ...]:
    """A key under which names that a case- or normalisation-insensitive file system
    (macOS, Windows) treats as one are one: ``X`` the link and ``x/y`` the member must
    not pass as two different paths. On other systems it only makes the checks stricter."""
    return tuple(unicodedata.normalize("NFC", part).casefold() for part in parts)


class _Tree:
    """The target folder as it will be once the members planned so far are written: what
    is already on disk (an earlier archive of the dataset, extracted into the same
    folder) under what this archive adds. Every check resolves links through it."""

    def __init__(self, target: Path, archive: Path) -> None:
        self.target, self.archive = target, archive
        self.planned: dict[tuple[str, ...], _Entry] = {}
        self.links: list[_Member] = []

    def refuse(self, member: str, why: str) -> NoReturn:
        raise DownloadError(
            f"archive {self.archive.name}: member {member!r} {why}; refusing to extract "
            f"the archive (nothing was written)"
        )

    def lookup(self, parts: tuple[str, ...]) -> _Entry | None:
        """The entry at ``parts``, ``None`` if nothing is there. Callers pass paths whose
        folders are real folders (checked component by component), so ``lstat`` follows
        no link of ours."""
        if not parts:
            return _Entry("dir")
        planned = self.planned.get(_fold(parts))
        if planned is not None:
            return planned
        path = self.target.joinpath(*parts)
        try:
            info = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(info.st_mode):
            return _Entry("symlink", os.readlink(path))
        if stat.S_ISDIR(info.st_mode):
            return _Entry("dir")
        return _Entry("file" if stat.S_ISREG(info.st_mode) else "other")

    def resolve(self, parts: tuple[str, ...], member: str, strict: bool = False) -> tuple[str, ...]:
        """The physical path (relative to the target) that ``parts`` names, following every
        link as the kernel would. Raises :class:`_LinkEscape` when it leaves the target;
        ``strict`` also refuses a path through something that does not exist."""
        pending, current, hops = list(parts), [], 0
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not current:
                    raise _LinkEscape
                current.pop()
                continue
            entry = self.lookup((*current, part))
            if entry is not None and entry.kind == "symlink":
                hops += 1
                if hops > _MAX_LINK_HOPS:
                    self.refuse(member, f"is a link in a loop of more than {_MAX_LINK_HOPS} links")
                link = PurePosixPath(entry.link or "")
                if link.is_absolute():
                    raise _LinkEscape
                pending[:0] = link.parts  # relative to the folder that holds the link
                continue
            if entry is None and strict:
                where = "/".join((*current, part))
                self.refuse(member, f"is a link through {where!r}, which the archive does not hold")
            current.append(part)
        return tuple(current)

    def _check_folders(self, member: _Member, parts: tuple[str, ...], what: str) -> None:
        """Every folder above ``parts`` must be a real folder: a member written through a
        link lands wherever the link points, which no lexical check sees."""
        for depth in range(1, len(parts)):
            entry = self.lookup(parts[:depth])
            where = "/".join(parts[:depth])
            if entry is None:
                self.planned[_fold(parts[:depth])] = _Entry("dir")  # tarfile creates it
            elif entry.kind == "symlink":
                self.refuse(
                    member.name,
                    f"{what} passes through the symbolic link {where!r} -> {entry.link!r}",
                )
            elif entry.kind != "dir":
                self.refuse(member.name, f"{what} lies under {where!r}, which is not a folder")

    def add(self, member: _Member) -> None:
        """Check one member against everything before it, then plan it."""
        self._check_folders(member, member.parts, "path")
        kind = "file" if member.kind == "hardlink" else member.kind
        existing = self.lookup(member.parts)
        if existing is not None and not (existing.kind == kind and kind in ("dir", "file")):
            # A link must never replace, or be replaced by, anything: a resolution that
            # was checked against one entry would then run through another.
            self.refuse(member.name, f"would replace an earlier {existing.kind} at the same path")
        if member.kind == "symlink":
            self._check_symlink(member)
            self.links.append(member)
        elif member.kind == "hardlink":
            target = PurePosixPath(member.link or "").parts
            self._check_folders(member, target, f"hard link target {member.link!r}")
            if not target or (linked := self.lookup(target)) is None or linked.kind != "file":
                self.refuse(
                    member.name,
                    f"is a hard link to {member.link!r}, which is not a regular file "
                    f"extracted before it",
                )
        self.planned[_fold(member.parts)] = _Entry(kind, member.link if kind == "symlink" else None)

    def _check_symlink(self, member: _Member, strict: bool = False) -> None:
        text = member.link or ""
        try:
            if not text or PurePosixPath(text).is_absolute():
                raise _LinkEscape
            self.resolve(member.parts[:-1] + PurePosixPath(text).parts, member.name, strict)
        except _LinkEscape:
            raise DownloadError(
                f"archive {self.archive.name}: link {member.name!r} -> {text!r} points "
                f"outside the target folder; refusing to extract the archive (nothing was "
                f"written)"
            ) from None

    def finish(self) -> None:
        """Resolve every link again against the whole archive: ``l -> d/..`` passes while
        ``d`` does not exist yet, and leaves the target once a later ``d -> .`` appears.
        Each link must now resolve inside through entries that exist, so no later member
        or archive (which may not replace an entry) can change where it leads."""
        for member in self.links:
            self._check_symlink(member, strict=True)


def _tar_member(info: tarfile.TarInfo, strip: str | None, archive: Path) -> _Member | None:
    """What a tar member is, or ``None`` to skip it; raises for the kinds never written."""
    relative = _member_path(info.name, strip, archive)
    if relative is None or (not relative.parts and info.isdir()):
        return None
    if info.ischr() or info.isblk() or info.isfifo():
        raise DownloadError(f"archive {archive.name}: device member {info.name!r} refused")
    if not (info.isfile() or info.isdir() or info.issym() or info.islnk()):
        raise DownloadError(
            f"archive {archive.name}: member {info.name!r} of tar type {info.type!r} refused "
            f"(only files, folders and links are extracted)"
        )
    if not relative.parts:
        raise DownloadError(f"archive {archive.name}: member {info.name!r} names the target itself")
    if info.issym():
        return _Member(info.name, relative.parts, "symlink", info.linkname)
    if info.islnk():  # a hard link names its target from the archive's root, not its folder
        try:
            linked = _member_path(info.linkname, strip, archive)
        except DownloadError:
            linked = None
        if linked is None or not linked.parts:
            raise DownloadError(
                f"archive {archive.name}: link {info.name!r} -> {info.linkname!r} points "
                f"outside the target folder; refusing to extract the archive"
            )
        return _Member(info.name, relative.parts, "hardlink", str(linked))
    return _Member(info.name, relative.parts, "dir" if info.isdir() else "file")


def _zip_member(
    bundle: zipfile.ZipFile, info: zipfile.ZipInfo, strip: str | None, archive: Path
) -> _Member | None:
    """What a zip entry is: its Unix mode (the high half of ``external_attr``) can make it
    a symlink, whose target is the entry's content, or a device; neither shows in its
    name."""
    relative = _member_path(info.filename, strip, archive)
    if relative is None or (not relative.parts and info.is_dir()):
        return None
    if not relative.parts:
        raise DownloadError(f"archive {archive.name}: member {info.filename!r} names the target")
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        if info.file_size > _MAX_LINK_TEXT:
            raise DownloadError(
                f"archive {archive.name}: link {info.filename!r} has a {info.file_size}-byte "
                f"target; refused"
            )
        try:
            text = bundle.read(info).decode("utf-8")
        except UnicodeDecodeError:
            raise DownloadError(
                f"archive {archive.name}: link {info.filename!r} has a target that is not "
                f"UTF-8 text; refused"
            ) from None
        return _Member(info.filename, relative.parts, "symlink", text)
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise DownloadError(f"archive {archive.name}: device member {info.filename!r} refused")
    is_dir = info.is_dir() or kind == stat.S_IFDIR
    return _Member(info.filename, relative.parts, "dir" if is_dir else "file")


def safe_extract(archive: Path, target: Path, strip: str | None = None) -> None:
    """Extract a .tar(.gz/.bz2/.xz) or .zip into ``target``, refusing unsafe members.

    Every member is checked before anything is written: no absolute path or ``..``, no
    device or other special file, no member whose folder is a link, no link (or hard
    link) that resolves outside ``target`` through the links before and after it, in this
    archive or already in ``target``, no link that replaces an entry or is replaced.
    ``strip`` drops the archive's top-level folder (``ESC-50-master/audio/x.wav`` ->
    ``audio/x.wav``).
    """
    target.mkdir(parents=True, exist_ok=True)
    tree = _Tree(target, archive)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            plan = []
            for info in bundle.infolist():
                member = _zip_member(bundle, info, strip, archive)
                if member is not None:
                    tree.add(member)
                    plan.append((info, member))
            tree.finish()
            for info, member in plan:
                _write_zip_member(bundle, info, member, target)
        return
    if not tarfile.is_tarfile(archive):
        raise DownloadError(f"{archive} is neither a tar nor a zip archive")
    with tarfile.open(archive) as bundle:
        members = []
        for info in bundle.getmembers():
            member = _tar_member(info, strip, archive)
            if member is None:
                continue
            tree.add(member)
            info.name = "/".join(member.parts)
            if member.kind == "hardlink":
                info.linkname = member.link or ""
            members.append(info)
        tree.finish()
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4+: tarfile's own checks too
            bundle.extractall(target, members=members, filter="data")
        else:
            for info in members:  # what the data filter would do to modes
                info.mode = 0o755 if info.isdir() or info.mode & 0o100 else 0o644
            bundle.extractall(target, members=members)


def _write_zip_member(
    bundle: zipfile.ZipFile, info: zipfile.ZipInfo, member: _Member, target: Path
) -> None:
    """Write one checked zip entry. ``O_NOFOLLOW``: a file is never written through a link
    at its own path, even one that appeared after the checks."""
    destination = target.joinpath(*member.parts)
    if member.kind == "dir":
        destination.mkdir(parents=True, exist_ok=True)
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    if member.kind == "symlink":
        os.symlink(member.link or "", destination)
        return
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    with bundle.open(info) as source, os.fdopen(os.open(destination, flags, 0o644), "wb") as sink:
        shutil.copyfileobj(source, sink, _BLOCK)


def download_dataset(
    spec: DatasetSpec, root: Path, progress: bool = True, keep_archives: bool = False
) -> Path:
    """Download and extract every archive of ``spec`` so that ``root`` holds the dataset.

    ``root`` appears only when everything is in place: archives are extracted into a
    staging folder next to it, which is then renamed to ``root``.
    """
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    # Several trials may start on a node without the dataset: one downloads, the others
    # wait for the lock and find the folder in place.
    with file_lock(root.parent / f".{root.name}.download.lock"):
        if root.is_dir() and (not spec.marker or (root / spec.marker).exists()):
            return root
        return _download_dataset(spec, root, progress, keep_archives)


def _download_dataset(spec: DatasetSpec, root: Path, progress: bool, keep_archives: bool) -> Path:
    if not spec.resources:
        raise DatasetNotFoundError(
            f"{spec.name} has no download URL; fetch it from {spec.homepage} into {root}"
        )
    if root.exists() and any(root.iterdir()):
        raise DatasetError(
            f"{root} exists and is not empty but does not hold {spec.name} (no "
            f"{spec.marker or 'data'}); empty or remove it to download, or fix data.root"
        )
    downloads = root.parent / ".downloads"
    staging = root.parent / f".{root.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for resource in spec.resources:
            archive = _fetch(resource, downloads, progress)
            safe_extract(archive, staging, strip=resource.strip)
        if spec.marker and not (staging / spec.marker).exists():
            raise DownloadError(
                f"{spec.name}: the downloaded archives do not contain {spec.marker}; the "
                f"upstream layout changed"
            )
        if root.exists():
            root.rmdir()  # empty (checked above)
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not keep_archives:
        for resource in spec.resources:
            (downloads / resource.filename).unlink(missing_ok=True)
    return root


def _fetch(resource: Resource, downloads: Path, progress: bool) -> Path:
    return download_file(
        resource.url,
        downloads / resource.filename,
        sha256=resource.sha256,
        md5=resource.md5,
        size=resource.size,
        progress=progress,
    )
