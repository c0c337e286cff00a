"""Build a decoded audio cache folder: the key that names it, the parallel decode, the
manifest, and the atomic rename into place.

:mod:`core.data.cache` decides whether a cache must be built and opens it; this module
writes one. They are apart because the writing side is its own job (worker processes,
staging folder, compaction of the rows that decoded, manifest) and is torch-free: it
needs only the dataset's listing and :mod:`core.data._decode`, and the reader imports its
format constants (:data:`FORMAT_VERSION`, :data:`MANIFEST`) from here.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from core.data._decode import decode_rows
from core.data.base import DatasetError, DatasetSpec, Listing

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_CHUNK = 64  # files per worker task: amortises scheduling, keeps the progress bar live
_PARALLEL_FROM = 512  # fewer clips decode faster in-process than worker processes start


@dataclass(frozen=True)
class CacheRequest:
    """Everything that determines the cached array, resolved from a ``DataConfig``."""

    spec: DatasetSpec
    root: Path
    label_field: str
    sample_rate: int
    clip_seconds: float
    clip_samples: int
    crop: str
    dtype: str
    max_clips: int | None
    strict: bool
    # The test split max_clips must leave whole: (split_scheme, test fold).
    test_split: tuple[str, int | None] = ("official", None)
    # The second folder of a dataset merged from two (``spec.extra_folder``), else None.
    extra_root: Path | None = None


def cache_key(request: CacheRequest, listing: Listing) -> str:
    """Hash of everything that changes the cached array; cheap (stats, no decoding)."""
    digest = hashlib.sha256()
    settings = {
        "format": FORMAT_VERSION,
        "dataset": request.spec.name,
        "version": request.spec.version,
        "label_field": request.label_field,
        "sample_rate": request.sample_rate,
        "clip_samples": request.clip_samples,
        "crop": request.crop,
        "dtype": request.dtype,
        "max_clips": request.max_clips,
        "class_names": listing.class_names,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for path in listing.files:
        try:
            stat = path.stat()
            signature = f"{_name(path, request)}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
        except OSError:
            signature = f"{_name(path, request)}\0missing\n"
        digest.update(signature.encode())
    for metadata in listing.metadata_files:
        digest.update(hashlib.sha256(metadata.read_bytes()).digest())
    for array in (listing.labels, listing.split, listing.fold):
        if array is not None:
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _name(path: Path, request: CacheRequest) -> str:
    """How the cache names an input: relative to the dataset folder; a file of a merged
    second folder as ``<extra_folder>/<path in it>``; anything else by its full path."""
    try:
        return path.relative_to(request.root).as_posix()
    except ValueError:
        pass
    if request.extra_root is not None:
        try:
            inner = path.relative_to(request.extra_root).as_posix()
            return f"{request.spec.extra_folder}/{inner}"
        except ValueError:
            pass
    return str(path)


def _worker_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class _InProcess:
    """A one-worker stand-in for a process pool: small builds are not worth the start-up."""

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, function: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(function(*args))
        return future


def _executor(workers: int) -> Executor | _InProcess:
    """Worker processes started by fork, as torch's DataLoader does on Linux.

    Fork needs no ``if __name__ == "__main__"`` guard in the caller's script (spawn would
    re-run a guard-less script in every worker) and starts in milliseconds; the workers
    only run numpy, libsndfile and soxr. Without fork (macOS, Windows), threads.
    """
    if workers <= 1:
        return _InProcess()
    if "fork" in multiprocessing.get_all_start_methods():
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(workers)


def build(request: CacheRequest, listing: Listing, directory: Path, progress: bool) -> None:
    """Decode every listed file into a new cache folder at ``directory`` (atomically)."""
    started = time.perf_counter()
    staging = directory.parent / f".{directory.name}.building-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        count = len(listing.files)
        raw = np.lib.format.open_memmap(
            staging / "raw.npy", mode="w+", dtype=request.dtype,
            shape=(count, request.clip_samples),
        )  # fmt: skip
        raw.flush()
        errors: dict[int, str] = {}
        hashes: dict[int, bytes] = {}
        chunks = [list(range(i, min(i + _CHUNK, count))) for i in range(0, count, _CHUNK)]
        bar = tqdm(total=count, desc=f"caching {request.spec.name}", unit="clip",
                   disable=not progress)  # fmt: skip
        workers = _worker_count() if count >= _PARALLEL_FROM else 1
        with _executor(workers) as pool:
            futures = [
                pool.submit(
                    decode_rows,
                    [listing.files[i] for i in rows],
                    rows,
                    staging / "raw.npy",
                    request.sample_rate,
                    request.clip_samples,
                    request.crop,
                    [_name(listing.files[i], request) for i in rows],
                )  # fmt: skip
                for rows in chunks
            ]
            for future in futures:
                results = future.result()
                for row, error, file_hash in results:
                    if error is None:
                        hashes[row] = file_hash
                    else:
                        errors[row] = error
                bar.update(len(results))
        bar.close()
        good = np.array(sorted(hashes), dtype=np.int64)
        if good.size == 0:
            raise DatasetError(
                f"{request.spec.name}: none of the {count} files under {request.root} could "
                f"be decoded (first error: {next(iter(errors.values()), 'none')})"
            )
        if errors:  # compact the good rows into the final array
            audio = np.lib.format.open_memmap(
                staging / "audio.npy", mode="w+", dtype=request.dtype,
                shape=(good.size, request.clip_samples),
            )  # fmt: skip
            for start in range(0, good.size, 1024):
                audio[start : start + 1024] = raw[good[start : start + 1024]]
            audio.flush()
            del audio, raw
            (staging / "raw.npy").unlink()
        else:
            raw.flush()
            del raw
            (staging / "raw.npy").rename(staging / "audio.npy")
        kept = listing.subset(good)
        np.save(staging / "labels.npy", kept.labels)
        if kept.split is not None:
            np.save(staging / "split.npy", kept.split.astype(str))
        if kept.fold is not None:
            np.save(staging / "fold.npy", kept.fold.astype(np.int64))
        (staging / "files.txt").write_text("".join(_name(p, request) + "\n" for p in kept.files))
        content = hashlib.sha256()
        for row in good:
            content.update(hashes[int(row)])
        content.update(directory.name.encode())  # the settings are part of the key
        excluded = [{"path": path, "reason": reason} for path, reason in listing.excluded] + [
            {"path": _name(listing.files[row], request), "reason": reason}
            for row, reason in sorted(errors.items())
        ]
        manifest = _manifest(request, kept, excluded, content.hexdigest(), directory.name)
        manifest["build_seconds"] = round(time.perf_counter() - started, 3)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _manifest(
    request: CacheRequest, kept: Listing, excluded: list[dict[str, str]], content: str, key: str
) -> dict[str, Any]:
    def counts(values: np.ndarray | None) -> dict[str, int] | None:
        if values is None:
            return None
        names, numbers = np.unique(values.astype(str), return_counts=True)
        return {str(n): int(c) for n, c in zip(names, numbers, strict=True)}

    return {
        "format": FORMAT_VERSION,
        "dataset": request.spec.name,
        "version": request.spec.version,
        "root": str(request.root),
        "extra_root": None if request.extra_root is None else str(request.extra_root),
        "label_field": request.label_field,
        "sample_rate": request.sample_rate,
        "clip_seconds": request.clip_seconds,
        "clip_samples": request.clip_samples,
        "crop": request.crop,
        "dtype": request.dtype,
        "max_clips": request.max_clips,
        "count": len(kept.files),
        "class_names": kept.class_names,
        "class_counts": np.bincount(kept.labels, minlength=len(kept.class_names)).tolist(),
        "split_counts": counts(kept.split),
        "fold_counts": counts(kept.fold),
        "excluded": excluded,
        "content_hash": content,
        "key": key,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
