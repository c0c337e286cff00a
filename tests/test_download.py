"""Downloads against a real HTTP server on the loopback interface serving fixture archives.

Nothing is mocked but the host: the server speaks real HTTP (Range requests, dropped
connections), the archives are real tar/zip files in the upstream layouts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import socket
import stat
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile

from core.config import DataConfig
from core.data import DATASETS, DatasetError, Resource, open_cache
from core.data.download import DownloadError, download_dataset, download_file
from core.data.extract import safe_extract


class ArchiveServer:
    """Serves ``files`` by path; can drop connections mid-body and ignore Range headers."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drops: dict[str, int] = {}  # path -> how many responses to cut in half
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                range_header = self.headers.get("Range")
                server.requests.append((self.path, range_header))
                if self.path not in server.files:
                    self.send_error(404, "no such archive")
                    return
                body = server.files[self.path]
                start = 0
                if range_header and not server.ignore_range:
                    start = int(range_header.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if server.drops.get(self.path, 0) > 0:
                    server.drops[self.path] -= 1
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server() -> Iterator[ArchiveServer]:
    archive_server = ArchiveServer()
    archive_server.thread.start()
    yield archive_server
    archive_server.httpd.shutdown()
    archive_server.httpd.server_close()


def wav_bytes(frequency: float, rate: int = 8_000) -> bytes:
    buffer = io.BytesIO()
    time = np.arange(rate // 4) / rate
    soundfile.write(buffer, 0.3 * np.sin(2 * np.pi * frequency * time), rate, format="WAV")
    return buffer.getvalue()


def tar_archive(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            bundle.addfile(info, io.BytesIO(content))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            bundle.addfile(info)
    return buffer.getvalue()


FSDD_TOP = "free-spoken-digit-dataset-26eb9aaf76e81b692f806f9140c2d2777410d7a1"


@pytest.fixture(scope="module")
def fsdd_archive() -> bytes:
    """An FSDD archive in the upstream repository-archive layout (top folder + recordings/)."""
    members = {f"{FSDD_TOP}/README.md": b"Free Spoken Digit Dataset"}
    for digit in range(10):
        for take in (0, 7):
            members[f"{FSDD_TOP}/recordings/{digit}_lucas_{take}.wav"] = wav_bytes(200 + 40 * digit)
    return tar_archive(members)


def test_dataset_downloads_itself_when_absent(
    server: ArchiveServer, fsdd_archive: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.files["/fsdd.tar.gz"] = fsdd_archive
    official = DATASETS["fsdd"].resources[0]
    loopback = dataclasses.replace(
        official, url=server.url("/fsdd.tar.gz"), sha256=hashlib.sha256(fsdd_archive).hexdigest()
    )
    monkeypatch.setitem(
        DATASETS, "fsdd", dataclasses.replace(DATASETS["fsdd"], resources=(loopback,))
    )
    cfg = DataConfig(dataset="fsdd", root=tmp_path / "data" / "fsdd", download=True,
                     cache_dir=tmp_path / "cache")  # fmt: skip

    cache = open_cache(cfg, progress=False)

    assert len(cache) == 20 and cache.manifest["split_counts"] == {"test": 10, "train": 10}
    assert (tmp_path / "data" / "fsdd" / "README.md").is_file()  # top folder stripped
    leftovers = sorted(p.name for p in (tmp_path / "data").iterdir() if p.suffix != ".lock")
    assert leftovers == [".downloads", "fsdd"]  # no staging folder, no partial file
    assert list((tmp_path / "data" / ".downloads").iterdir()) == []  # archive removed
    open_cache(cfg, progress=False)
    assert len(server.requests) == 1  # present now: no second download


def test_interrupted_download_resumes_with_a_range_request(
    server: ArchiveServer, fsdd_archive: bytes, tmp_path: Path
) -> None:
    server.files["/a.tar.gz"] = fsdd_archive
    server.drops["/a.tar.gz"] = 1
    target = download_file(server.url("/a.tar.gz"), tmp_path / "a.tar.gz", progress=False,
                           sha256=hashlib.sha256(fsdd_archive).hexdigest())  # fmt: skip
    assert target.read_bytes() == fsdd_archive
    assert server.requests[0][1] is None
    assert server.requests[1][1] == f"bytes={len(fsdd_archive) // 2}-"
    assert not (tmp_path / "a.tar.gz.part").exists()


def test_interrupted_download_restarts_when_ranges_are_ignored(
    server: ArchiveServer, fsdd_archive: bytes, tmp_path: Path
) -> None:
    server.files["/a.tar.gz"] = fsdd_archive
    server.drops["/a.tar.gz"] = 1
    server.ignore_range = True
    target = download_file(server.url("/a.tar.gz"), tmp_path / "a.tar.gz", progress=False,
                           md5=hashlib.md5(fsdd_archive).hexdigest())  # fmt: skip
    assert target.read_bytes() == fsdd_archive  # not the first half twice


def test_repeated_interruptions_leave_only_a_part_file_that_a_rerun_resumes(
    server: ArchiveServer, fsdd_archive: bytes, tmp_path: Path
) -> None:
    server.files["/a.tar.gz"] = fsdd_archive
    server.drops["/a.tar.gz"] = 2
    destination = tmp_path / "a.tar.gz"
    with pytest.raises(DownloadError, match="interrupted 2 times.*resumes"):
        download_file(server.url("/a.tar.gz"), destination, progress=False, attempts=2)
    assert not destination.exists()
    assert 0 < (tmp_path / "a.tar.gz.part").stat().st_size < len(fsdd_archive)
    download_file(server.url("/a.tar.gz"), destination, progress=False,
                  size=len(fsdd_archive))  # fmt: skip
    assert destination.read_bytes() == fsdd_archive
    assert server.requests[-1][1] is not None  # the rerun asked for the rest only


def test_checksum_mismatch_is_an_error_and_removes_the_partial_file(
    server: ArchiveServer, fsdd_archive: bytes, tmp_path: Path
) -> None:
    server.files["/a.tar.gz"] = fsdd_archive
    with pytest.raises(DownloadError, match=r"sha256 [0-9a-f]{64}, expected 0000.*removed"):
        download_file(server.url("/a.tar.gz"), tmp_path / "a.tar.gz", progress=False,
                      sha256="0" * 64)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_http_errors_and_unreachable_hosts_are_clear(server: ArchiveServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(server.url("/missing.tar.gz"), tmp_path / "m.tar.gz", progress=False)
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match="cannot reach"):
        download_file(f"http://127.0.0.1:{closed_port}/x.tar.gz", tmp_path / "x", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_archive_member_with_parent_path_is_refused(
    server: ArchiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evil = tar_archive({f"{FSDD_TOP}/recordings/0_a_0.wav": wav_bytes(300),
                        f"{FSDD_TOP}/../../escaped.txt": b"owned"})  # fmt: skip
    server.files["/evil.tar.gz"] = evil
    spec = dataclasses.replace(
        DATASETS["fsdd"],
        resources=(
            Resource(
                url=server.url("/evil.tar.gz"),
                filename="evil.tar.gz",
                strip=FSDD_TOP,
                sha256=hashlib.sha256(evil).hexdigest(),
            ),  # its digest: verified, still evil
        ),
    )
    root = tmp_path / "data" / "fsdd"
    with pytest.raises(DownloadError, match=r"'\S*\.\./\.\./escaped\.txt'.*outside"):
        download_dataset(spec, root, progress=False)
    assert not root.exists()
    assert [p.name for p in (tmp_path / "data").iterdir() if p.suffix != ".lock"] == [".downloads"]
    assert not any(tmp_path.rglob("escaped.txt"))


def test_links_out_of_the_target_and_absolute_paths_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "links.tar.gz"
    archive.write_bytes(tar_archive({"data/a.wav": b"x"}, links={"data/b.wav": "../../etc/passwd"}))
    with pytest.raises(DownloadError, match="points outside"):
        safe_extract(archive, tmp_path / "out")
    archive.write_bytes(tar_archive({"/etc/clarlab-test": b"x"}))
    with pytest.raises(DownloadError, match="outside the target folder"):
        safe_extract(archive, tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def test_zip_archives_extract_with_strip_and_refuse_traversal(tmp_path: Path) -> None:
    archive = tmp_path / "ESC-50-master.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("ESC-50-master/", b"")
        bundle.writestr("ESC-50-master/meta/esc50.csv", b"filename,fold,target,category,esc10\n")
        bundle.writestr("ESC-50-master/audio/1-100-A-0.wav", wav_bytes(300))
    safe_extract(archive, tmp_path / "esc50", strip="ESC-50-master")
    assert (tmp_path / "esc50" / "meta" / "esc50.csv").is_file()
    assert (tmp_path / "esc50" / "audio" / "1-100-A-0.wav").is_file()

    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("../outside.txt", b"owned")
    with pytest.raises(DownloadError, match="outside"):
        safe_extract(archive, tmp_path / "zip-out")
    assert not (tmp_path / "outside.txt").exists()


def test_download_refuses_to_overwrite_a_non_empty_folder(tmp_path: Path) -> None:
    root = tmp_path / "fsdd"
    root.mkdir()
    (root / "something.txt").write_text("user data")
    with pytest.raises(DatasetError, match="not empty"):
        download_dataset(DATASETS["fsdd"], root, progress=False, allow_unverified=True)
    assert (root / "something.txt").read_text() == "user data"


# --- archives that try to write outside the target ---------------------------------------
def tar_of(*entries: tuple[str, str, str | bytes]) -> bytes:
    """A tar.gz of ``(name, kind, payload)`` in order; kind is file, dir, sym, hard, chr or
    fifo, payload a file's bytes or a link's target."""
    types = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
             "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}  # fmt: skip
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = payload if isinstance(payload, bytes) else payload.encode()
                info.size = len(data)
                bundle.addfile(info, io.BytesIO(data))
                continue
            info.type = types[kind]
            if kind in ("sym", "hard"):
                info.linkname = str(payload)
            bundle.addfile(info)
    return buffer.getvalue()


def zip_of(path: Path, *entries: tuple[str, str, str | bytes]) -> Path:
    """A zip of ``(name, kind, payload)``; a ``sym`` entry is a Unix symlink (its mode in
    the high half of ``external_attr``, its target as its content), as ``zip -y`` writes."""
    with zipfile.ZipFile(path, "w") as bundle:
        for name, kind, payload in entries:
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # Unix
            mode = {"file": stat.S_IFREG | 0o644, "sym": stat.S_IFLNK | 0o777,
                    "chr": stat.S_IFCHR | 0o600}[kind]  # fmt: skip
            info.external_attr = mode << 16
            bundle.writestr(info, payload)
    return path


CHAIN = (("x", "sym", "."), ("x/x/y", "sym", "../../"), ("x/x/y/escaped.txt", "file", "owned"))

REFUSED = {
    # The lexical check passes every member of these; the model of links does not.
    "chain through an earlier link": (CHAIN, r"'x/x/y' path passes through the symbolic link 'x'"),
    "link whose target walks through links": (
        (("x", "sym", "."), ("y", "sym", "x/x/x/../.."), ("y/escaped.txt", "file", "owned")),
        r"link 'y' -> 'x/x/x/\.\./\.\.' points outside",
    ),
    "link that escapes once a later link appears": (
        # l -> d/.. is the target itself while d does not exist; d -> . makes it its parent.
        # tarfile's data filter checks l before d exists, so it extracts both.
        (("l", "sym", "d/.."), ("d", "sym", ".")),
        r"link 'l' -> 'd/\.\.' points outside",
    ),
    "plain link out": ((("data/b.wav", "sym", "../../etc/passwd"),), "points outside"),
    "absolute link": ((("data/b.wav", "sym", "/etc/passwd"),), "points outside"),
    "hard link out": ((("data/b.wav", "hard", "../outside.txt"),), "points outside"),
    "hard link to nothing extracted": (
        (("data/b.wav", "hard", "data/missing.wav"),),
        "not a regular file extracted before it",
    ),
    "link replacing a folder": (
        (("d/a.wav", "file", "x"), ("sub/", "dir", ""), ("d", "sym", "sub")),
        "would replace an earlier dir",
    ),
    "link named in another case": (
        (("X", "sym", "sub"), ("sub/", "dir", ""), ("x/a.wav", "file", "x")),
        "'x/a.wav' path passes through the symbolic link 'x' -> 'sub'",
    ),
    "device": ((("dev/null", "chr", ""),), "device member 'dev/null' refused"),
    "fifo": ((("pipe", "fifo", ""),), "device member 'pipe' refused"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unsafe_tar_archives_are_refused_before_anything_is_written(
    case: str, tmp_path: Path
) -> None:
    entries, message = REFUSED[case]
    box = tmp_path / "box"  # the target's parent: what an escape would write into
    box.mkdir()
    archive = tmp_path / "archive.tar.gz"
    archive.write_bytes(tar_of(("data/a.wav", "file", "a normal member first"), *entries))

    with pytest.raises(DownloadError, match=message):
        safe_extract(archive, box / "out")

    assert [p.name for p in box.iterdir()] == ["out"]
    assert list((box / "out").iterdir()) == []  # checked first, written never
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive.tar.gz", "box"]


def test_links_inside_the_target_still_extract(tmp_path: Path) -> None:
    archive = tmp_path / "ok.tar.gz"
    archive.write_bytes(
        tar_of(
            ("data/a.wav", "file", b"riff"),
            ("data/alias.wav", "sym", "a.wav"),
            ("latest", "sym", "data"),
            ("data/hard.wav", "hard", "data/a.wav"),
            ("data/up", "sym", ".."),  # the target itself: inside
            ("forward", "sym", "later/b.wav"),  # a link to a member further on
            ("later/b.wav", "file", b"b"),
        )
    )
    out = tmp_path / "out"
    safe_extract(archive, out)

    assert (out / "latest").is_symlink() and (out / "latest" / "alias.wav").read_bytes() == b"riff"
    assert (out / "data" / "hard.wav").read_bytes() == b"riff"
    assert os.path.samefile(out / "data" / "hard.wav", out / "data" / "a.wav")
    assert (out / "data" / "up" / "forward").read_bytes() == b"b"


def test_a_link_from_an_earlier_archive_is_followed_too(tmp_path: Path) -> None:
    """Datasets of several archives extract into one staging folder: a link the first one
    left is part of the tree the second one is checked against."""
    box = tmp_path / "box"
    out = box / "out"
    first, second = tmp_path / "first.tar.gz", tmp_path / "second.tar.gz"
    first.write_bytes(tar_of(("x", "sym", "."), ("a.wav", "file", "a")))
    safe_extract(first, out)

    second.write_bytes(tar_of(("x/x/y", "sym", "../../")))
    with pytest.raises(DownloadError, match="'x/x/y' path passes through the symbolic link 'x'"):
        safe_extract(second, out)
    second.write_bytes(tar_of(("y", "sym", "x/x/..")))
    with pytest.raises(DownloadError, match="'y' -> 'x/x/\\.\\.' points outside"):
        safe_extract(second, out)
    second.write_bytes(tar_of(("x", "file", "replaces the link")))
    with pytest.raises(DownloadError, match="would replace an earlier symlink"):
        safe_extract(second, out)

    assert sorted(p.name for p in out.iterdir()) == ["a.wav", "x"]
    assert [p.name for p in box.iterdir()] == ["out"]


def test_a_dangling_link_is_refused(tmp_path: Path) -> None:
    """A link through something the archive never creates could be completed by a later
    archive; each link must lead to something that exists once its archive is planned."""
    archive = tmp_path / "dangling.tar.gz"
    archive.write_bytes(tar_of(("l", "sym", "missing/..")))
    with pytest.raises(DownloadError, match="link through 'missing'"):
        safe_extract(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_zip_symlinks_are_checked_like_tar_links(tmp_path: Path) -> None:
    box = tmp_path / "box"
    box.mkdir()
    refused = {
        "out.zip": ((("data/a.wav", "file", b"x"), ("data/b.wav", "sym", "../../etc/passwd")),
                    "link 'data/b.wav' -> '../../etc/passwd' points outside"),
        "chain.zip": (CHAIN, "'x/x/y' path passes through the symbolic link 'x'"),
        "device.zip": ((("null", "chr", b""),), "device member 'null' refused"),
    }  # fmt: skip
    for name, (entries, message) in refused.items():
        with pytest.raises(DownloadError, match=message):
            safe_extract(zip_of(tmp_path / name, *entries), box / "out")
        assert [p.name for p in box.iterdir()] == ["out"]
        assert list((box / "out").iterdir()) == []

    ok = zip_of(tmp_path / "ok.zip", ("top/a.wav", "file", b"riff"), ("top/alias", "sym", "a.wav"))
    safe_extract(ok, tmp_path / "zip-ok", strip="top")
    alias = tmp_path / "zip-ok" / "alias"
    assert alias.is_symlink() and alias.read_bytes() == b"riff"  # a link, not a text file


def test_a_chained_link_archive_downloaded_from_a_server_leaves_nothing(
    server: ArchiveServer, tmp_path: Path
) -> None:
    server.files["/chain.tar.gz"] = tar_of(*((f"{FSDD_TOP}/{n}", k, p) for n, k, p in CHAIN))
    spec = dataclasses.replace(
        DATASETS["fsdd"],
        resources=(
            Resource(
                url=server.url("/chain.tar.gz"),
                filename="chain.tar.gz",
                strip=FSDD_TOP,
                sha256=hashlib.sha256(server.files["/chain.tar.gz"]).hexdigest(),
            ),
        ),
    )
    root = tmp_path / "data" / "fsdd"
    with pytest.raises(DownloadError, match="'[^']*x/x/y' path passes through"):
        download_dataset(spec, root, progress=False)
    assert not root.exists()
    assert [p.name for p in (tmp_path / "data").iterdir() if p.suffix != ".lock"] == [".downloads"]
    assert not any(tmp_path.rglob("escaped.txt"))


def test_an_archive_without_a_known_digest_is_refused_before_any_request(
    server: ArchiveServer, fsdd_archive: bytes, tmp_path: Path
) -> None:
    """No SHA-256, no download: refused before the server is asked for anything, naming the
    archive and both ways on; with data.allow_unverified the same archive is fetched."""
    server.files["/fsdd.tar.gz"] = fsdd_archive
    unverified = dataclasses.replace(
        DATASETS["fsdd"],
        resources=(
            Resource(url=server.url("/fsdd.tar.gz"), filename="fsdd.tar.gz", strip=FSDD_TOP),
        ),
    )
    root = tmp_path / "data" / "fsdd"
    with pytest.raises(DatasetError, match=r"no SHA-256 is recorded for fsdd\.tar\.gz") as refused:
        download_dataset(unverified, root, progress=False)
    assert "data.allow_unverified=true" in str(refused.value) and "sha256=" in str(refused.value)
    assert server.requests == [] and not root.exists()
    download_dataset(unverified, root, progress=False, allow_unverified=True)
    assert (root / "README.md").is_file() and len(server.requests) == 1


def test_a_tampered_archive_is_refused_by_its_digest(
    server: ArchiveServer, fsdd_archive: bytes, tmp_path: Path
) -> None:
    """The archive the digest names, one byte changed on the way: refused, nothing kept."""
    tampered = bytearray(fsdd_archive)
    tampered[len(tampered) // 2] ^= 0xFF
    server.files["/fsdd.tar.gz"] = bytes(tampered)
    spec = dataclasses.replace(
        DATASETS["fsdd"],
        resources=(Resource(url=server.url("/fsdd.tar.gz"), filename="fsdd.tar.gz", strip=FSDD_TOP,
                            sha256=hashlib.sha256(fsdd_archive).hexdigest()),),
    )  # fmt: skip
    root = tmp_path / "data" / "fsdd"
    with pytest.raises(DownloadError, match="sha256"):
        download_dataset(spec, root, progress=False)
    assert not root.exists() and not any((tmp_path / "data" / ".downloads").iterdir())
