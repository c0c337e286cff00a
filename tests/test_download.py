"""Downloads against a real HTTP server on the loopback interface serving fixture archives.

Nothing is mocked but the host: the server speaks real HTTP (Range requests, dropped
connections), the archives are real tar/zip files in the upstream layouts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import socket
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
from core.data.download import DownloadError, download_dataset, download_file, safe_extract


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
            Resource(url=server.url("/evil.tar.gz"), filename="evil.tar.gz", strip=FSDD_TOP),
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
        download_dataset(DATASETS["fsdd"], root, progress=False)
    assert (root / "something.txt").read_text() == "user data"
