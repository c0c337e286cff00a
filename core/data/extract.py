"""Extract a dataset's archives into a folder, refusing any member that would land outside.

:mod:`core.data.download` fetches the official archives; this module unpacks them, and
holds the part of that job that needs care: archives come from the network, so every
member is checked against a model of the target folder (absolute paths, ``..``, device
files, members written through a link, links that resolve outside through other links, in
the archive or already extracted) before anything is written, and every write checks its real path
again. The checks and the writes are this module's own, not tarfile's filters. Kept apart from the download so that each module holds one
job and the checks can be read, and tested, on their own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import unicodedata
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, NoReturn

from core.data.base import DownloadError

_BLOCK = 1 << 20  # bytes copied at a time out of a zip member


# --- extraction -------------------------------------------------------------------------
# Every member is checked against a model of what the target folder will hold before
# anything is written; each write then checks the real path again with lstat.
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
    Then every write checks the real path again (:func:`_real_folder`: each folder above
    the member is a real folder, found with ``lstat``, no link followed), so a check that
    was wrong about the disk (a case-folding file system, an entry that appeared since)
    still cannot write outside. The writes are this module's own, not tarfile's
    ``extractall``, whose filters were bypassed (CVE-2025-4517, -4138, -4330,
    CVE-2024-12718) in the Python versions this project runs on. ``strip`` drops the
    archive's top-level folder (``ESC-50-master/audio/x.wav`` -> ``audio/x.wav``).
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
                contents = (lambda i=info: bundle.open(i)) if member.kind == "file" else None
                _write_member(target, member, contents, archive)
        return
    if not tarfile.is_tarfile(archive):
        raise DownloadError(f"{archive} is neither a tar nor a zip archive")
    with tarfile.open(archive) as bundle:
        tar_plan = []
        for info in bundle.getmembers():
            member = _tar_member(info, strip, archive)
            if member is None:
                continue
            tree.add(member)
            tar_plan.append((info, member))
        tree.finish()
        for info, member in tar_plan:
            opener = (lambda i=info: bundle.extractfile(i)) if member.kind == "file" else None
            _write_member(target, member, opener, archive, executable=bool(info.mode & 0o100))


def _refuse_write(archive: Path, member: _Member, why: str) -> NoReturn:
    raise DownloadError(
        f"archive {archive.name}: member {member.name!r} {why}; refusing to write it (the "
        f"archive is not trustworthy)"
    )


def _real_folder(target: Path, parts: tuple[str, ...], member: _Member, archive: Path) -> Path:
    """The folder ``target/parts``, created where missing, with every component checked
    by ``lstat`` to be a real folder: a write below it cannot pass through a link."""
    folder = target
    for part in parts:
        folder = folder / part
        try:
            info = os.lstat(folder)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):  # made meanwhile: checked below
                os.mkdir(folder, 0o755)
            info = os.lstat(folder)
        if stat.S_ISLNK(info.st_mode):
            _refuse_write(archive, member, f"would be written through the link {str(folder)!r}")
        if not stat.S_ISDIR(info.st_mode):
            _refuse_write(archive, member, f"lies under {str(folder)!r}, which is not a folder")
    return folder


def _write_member(
    target: Path,
    member: _Member,
    open_contents: Callable[[], IO[bytes] | None] | None,
    archive: Path,
    executable: bool = False,
) -> None:
    """Write one checked member, its real path checked again at the moment of writing."""
    if member.kind == "dir":
        _real_folder(target, member.parts, member, archive)
        return
    folder = _real_folder(target, member.parts[:-1], member, archive)
    destination = folder / member.parts[-1]
    try:
        existing = os.lstat(destination)
    except FileNotFoundError:
        existing = None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        _refuse_write(archive, member, "would replace something that is not a regular file")
    if member.kind == "symlink":
        if existing is not None:
            _refuse_write(archive, member, "is a link that would replace a file")
        os.symlink(member.link or "", destination)
        return
    if member.kind == "hardlink":
        linked = PurePosixPath(member.link or "").parts
        source = _real_folder(target, linked[:-1], member, archive) / linked[-1]
        if not stat.S_ISREG(os.lstat(source).st_mode):
            _refuse_write(archive, member, "is a hard link to something that is not a file")
        if existing is not None:
            os.unlink(destination)
        os.link(source, destination, follow_symlinks=False)
        return
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    mode = 0o755 if executable else 0o644  # no setuid, no group or world write
    contents = open_contents() if open_contents else None
    if contents is None:
        _refuse_write(archive, member, "has no contents to read")
    with contents as source, os.fdopen(os.open(destination, flags, mode), "wb") as sink:
        shutil.copyfileobj(source, sink, _BLOCK)


def merge_tree(source: Path, target: Path) -> None:
    """Move the extracted tree ``source`` into ``target``, where other archives of the same
    dataset were extracted, without following any link: each archive is extracted into its
    own fresh folder (checked against itself alone), then merged. Folders merge with
    folders and a file replaces a file; a link meeting anything already there, or a folder
    meeting a file, is refused, so no link can redirect another archive's members (archive
    1 holding ``k -> .`` and archive 2 ``K/``, ``k/x -> ..`` and ``x/evil``)."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(os.scandir(source), key=lambda item: item.name):
        here, there = Path(entry.path), target / entry.name
        try:
            existing = os.lstat(there)
        except FileNotFoundError:
            os.rename(here, there)  # renames the entry itself: a link is moved, not followed
            continue
        mine = os.lstat(here)
        if stat.S_ISDIR(mine.st_mode) and stat.S_ISDIR(existing.st_mode):
            merge_tree(here, there)
            continue
        if stat.S_ISREG(mine.st_mode) and stat.S_ISREG(existing.st_mode):
            os.replace(here, there)
            continue
        raise DownloadError(
            f"two archives of the dataset both hold {entry.name!r} under {target}, and one "
            f"of them is a link or they are of different kinds; refusing to merge them"
        )
