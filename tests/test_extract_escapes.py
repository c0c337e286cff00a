"""Archives shaped like published escapes cannot write outside the dataset folder: the
multi-archive case-folding probe (downloaded from a loopback server), and the shapes of the
tarfile filter bypasses CVE-2025-4517, CVE-2025-4138, CVE-2025-4330 and CVE-2024-12718,
against this project's own checks and writes (tarfile's filters are not used)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from core.data import DATASETS
from core.data.base import DownloadError, Resource
from core.data.download import download_dataset
from core.data.extract import merge_tree, safe_extract
from tests.test_download import FSDD_TOP, ArchiveServer, server, tar_of, zip_of  # noqa: F401

# Archive 1 makes ``k`` the folder itself; archive 2, checked against itself alone, holds a
# folder ``K`` (the same name on a case-folding file system), a link ``k/x -> ..`` and a
# member under ``x``. Extracted into one folder they wrote ``evil`` above the target.
FIRST = (("k", "sym", "."), ("a.wav", "file", "a"))
SECOND = (("K/", "file", ""), ("k/x", "sym", ".."), ("x/evil", "file", "owned"))


def test_the_multi_archive_case_folding_probe_writes_nothing_outside(
    server: ArchiveServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    # Zips: no tarfile filter stands in the way, only the project's own checks.
    for name, entries in (("one", FIRST), ("two", SECOND)):
        archive = zip_of(
            tmp_path / f"{name}.zip", *((f"{FSDD_TOP}/{n}", k, p) for n, k, p in entries)
        )
        server.files[f"/{name}.zip"] = archive.read_bytes()
    spec = dataclasses.replace(
        DATASETS["fsdd"],
        resources=tuple(
            Resource(
                url=server.url(f"/{name}.zip"),
                filename=f"{name}.zip",
                strip=FSDD_TOP,
                sha256=hashlib.sha256(server.files[f"/{name}.zip"]).hexdigest(),
            )
            for name in ("one", "two")
        ),
    )
    home = tmp_path / "home"
    root = home / "clarlab-data" / "fsdd"
    with pytest.raises(DownloadError, match="'k'.*refusing to merge"):
        download_dataset(spec, root, progress=False)
    assert not root.exists()
    assert not any(tmp_path.rglob("evil")), "a member was written outside the dataset folder"
    leftovers = [p.name for p in root.parent.iterdir() if p.suffix != ".lock"]
    assert leftovers == [".downloads"]  # no staging folder left behind


def test_merging_never_lets_a_link_meet_another_archives_entry(tmp_path: Path) -> None:
    """The merge itself, with each case: folders merge, a file replaces a file, a link
    meeting anything is refused, and nothing is followed."""
    first, second, target = tmp_path / "first", tmp_path / "second", tmp_path / "target"
    safe_extract(_tar(tmp_path / "a.tar.gz", ("d/a.wav", "file", "a"), ("n", "file", "1")), first)
    safe_extract(_tar(tmp_path / "b.tar.gz", ("d/b.wav", "file", "b"), ("n", "file", "2")), second)
    merge_tree(first, target)
    merge_tree(second, target)
    assert sorted(p.name for p in (target / "d").iterdir()) == ["a.wav", "b.wav"]
    assert (target / "n").read_text() == "2"

    linked = tmp_path / "linked"
    safe_extract(_tar(tmp_path / "c.tar.gz", ("m", "file", "x"), ("d", "sym", "m")), linked)
    with pytest.raises(DownloadError, match="'d'.*refusing to merge"):
        merge_tree(linked, target)
    assert (target / "d").is_dir() and not (target / "d").is_symlink()


def _tar(path: Path, *entries: tuple[str, str, str]) -> Path:
    path.write_bytes(tar_of(*entries))
    return path


def _cve_2025_4517() -> tuple[tuple[str, str, str], ...]:
    """The published PATH_MAX shape: 16 nested 247-character folders, each reached through
    a one-letter link, so that the path of a link deep inside is longer than PATH_MAX and
    ``os.path.realpath`` stops resolving it; a link from there climbs out, and a file is
    written through it."""
    component, steps, entries, path = "d" * 247, "abcdefghijklmnop", [], ""
    for step in steps:
        entries.append((f"{path}{component}/", "dir", ""))
        entries.append((f"{path}{step}", "sym", component))
        path = f"{path}{component}/"
    deep = "/".join(steps) + "/" + "l" * 254
    entries.append((deep, "sym", "../" * len(steps)))
    entries.append(("escape", "sym", f"{deep}/../../../../../../../.."))
    entries.append(("escape/evil", "file", "owned"))
    return tuple(entries)


CVE_SHAPES = {
    "CVE-2025-4517 realpath past PATH_MAX": _cve_2025_4517(),
    # A link to a folder, then a link inside it whose '..' climbs from where the link
    # leads rather than where it sits.
    "CVE-2025-4138 link target resolved from the wrong folder": (
        ("sub/", "dir", ""),
        ("sub/inner/", "dir", ""),
        ("hop", "sym", "sub/inner"),
        ("hop/up", "sym", "../../.."),
        ("hop/up/evil", "file", "owned"),
    ),
    # The same escape without the data filter (the 'tar' filter's case): a plain chain.
    "CVE-2025-4330 link chain out of the folder": (
        ("a", "sym", "."),
        ("b", "sym", "a/a/a/.."),
        ("c", "sym", "b/.."),
        ("c/evil", "file", "owned"),
    ),
    # Metadata (mode, times) applied through a link to a file outside: a link, then a
    # regular member of the same name.
    "CVE-2024-12718 metadata through a link": (
        ("victim", "sym", "../outside.txt"),
        ("victim", "file", "owned"),
    ),
}


@pytest.mark.parametrize("case", sorted(CVE_SHAPES))
def test_published_tarfile_escape_shapes_are_refused_by_our_checks(
    case: str, tmp_path: Path
) -> None:
    box = tmp_path / "box"
    box.mkdir()
    outside = box / "outside.txt"
    outside.write_text("untouched")
    outside.chmod(0o600)
    archive = _tar(tmp_path / "cve.tar.gz", *CVE_SHAPES[case])
    with pytest.raises(DownloadError):
        safe_extract(archive, box / "out")
    assert sorted(p.name for p in box.iterdir()) == ["out", "outside.txt"]
    assert outside.read_text() == "untouched" and outside.stat().st_mode & 0o777 == 0o600
    assert not any(tmp_path.rglob("evil"))
