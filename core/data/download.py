"""Fetch a dataset's official archives and extract them, safely and atomically.

- A download streams into ``<name>.part`` and is renamed only once its size and checksum
  check out, so an interrupted download never leaves a file that looks complete. A later
  attempt resumes the ``.part`` file with an HTTP Range request, or restarts it when the
  server does not honour ranges.
- A checksum or size mismatch removes the partial file and raises, naming the URL and
  both values.
- Extraction (:func:`core.data.extract.safe_extract`) refuses archive members that would
  land outside the target folder (absolute paths, ``..``, device files, members written
  through a link, links that resolve outside through other links, in the archive or
  already extracted) before writing anything, and writes into a staging folder that is
  renamed into place only when every archive is extracted: each archive into a fresh
  folder of its own, merged into the staging folder without following links. The checks
  and the writes live in :mod:`core.data.extract`.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from core.data.base import (
    DatasetError,
    DatasetNotFoundError,
    DatasetSpec,
    DownloadError,
    Resource,
    check_verifiable,
    file_lock,
)
from core.data.extract import merge_tree, safe_extract

_BLOCK = 1 << 20
_USER_AGENT = "clarlab-data/0.1"


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


def download_dataset(
    spec: DatasetSpec,
    root: Path,
    progress: bool = True,
    keep_archives: bool = False,
    allow_unverified: bool = False,
) -> Path:
    """Download and extract every archive of ``spec`` so that ``root`` holds the dataset.

    ``root`` appears only when everything is in place: archives are extracted into a
    staging folder next to it, which is then renamed to ``root``.
    """
    root = Path(root)
    check_verifiable(spec, allow_unverified)  # before any request
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
        for number, resource in enumerate(spec.resources):
            archive = _fetch(resource, downloads, progress)
            # Each archive into a fresh folder of its own, checked against itself alone,
            # then merged without following links (core.data.extract.merge_tree).
            unpacked = staging.with_name(f"{staging.name}-{number}")
            shutil.rmtree(unpacked, ignore_errors=True)
            try:
                safe_extract(archive, unpacked, strip=resource.strip)
                merge_tree(unpacked, staging)
            finally:
                shutil.rmtree(unpacked, ignore_errors=True)
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
