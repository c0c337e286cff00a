"""Extract a dataset's archives into a folder, refusing any member that would land outside.

:mod:`core.data.download` fetches the official archives; this module unpacks them, and
holds the part of that job that needs care: archives come from the network, so every
member is checked against a model of the target folder (absolute paths, ``..``, device
files, members written through a link, links that resolve outside through other links, in
the archive or already extracted) before anything is written. The checks are this
module's own; tarfile's ``data`` filter (whose known bypasses are fixed only in newer
Pythons) is a second layer. Kept apart from the download so that each module holds one
job and the checks can be read, and tested, on their own.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NoReturn

from core.data.base import DownloadError

_BLOCK = 1 << 20  # bytes copied at a time out of a zip member


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
