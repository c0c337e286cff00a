"""Data-layer benchmark: cache build throughput and batch reads vs decoding files.

Measured on the real FSDD (``$CLARLAB_DATA/fsdd``), in one run:

- cache build: clips/s of a fresh build (worker processes on all cores; scan, hashing, writing
  and manifest included), against decoding the same clips one by one in a single thread;
- batch reads: random batches of 256 clips from the memory-mapped cache
  (``AudioCache.batch``) against decoding the same 256 files with soundfile each time,
  both bare (``soundfile.read``) and through the full decode + resample + pad pipeline
  that the cache replaces.

The headline ratio ``cache_read_vs_decode`` uses the bare soundfile read, the cheaper
of the two references. Prints a table, then one JSON line of headline figures.

    python bench/data.py [--batches 20] [--dtype float16] [--root PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile

from core.audio import load_clip
from core.config import DataConfig
from core.data import cache as cache_module  # noqa: F401 - imports torch before any timing
from core.data import open_cache
from core.memory import keep_freed_pages


def timed(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls (after one warm-up call)."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_root = Path(os.environ.get("CLARLAB_DATA", "../shared/datasets")) / "fsdd"
    parser.add_argument("--root", type=Path, default=default_root, help="FSDD folder")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per method")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--dtype", default="int16", choices=["int16", "float16", "float32"])
    args = parser.parse_args()
    if not (args.root / "recordings").is_dir():
        raise SystemExit(f"FSDD not found at {args.root}; set CLARLAB_DATA or pass --root")
    keep_freed_pages()  # as training workers do (core.memory)

    with tempfile.TemporaryDirectory(prefix="clarlab-bench-") as scratch:
        cfg = DataConfig(dataset="fsdd", root=args.root, cache_dir=Path(scratch),
                         cache_dtype=args.dtype)  # fmt: skip
        started = time.perf_counter()
        cache = open_cache(cfg, progress=False)
        build_seconds = time.perf_counter() - started
        paths = [args.root / name for name in cache.files]

        serial_sample = paths  # the same clips as the build, one by one in one thread
        started = time.perf_counter()
        for path in serial_sample:
            load_clip(path, cache.sample_rate, cache.clip_samples)
        serial_clips_per_s = len(serial_sample) / (time.perf_counter() - started)

        rng = np.random.default_rng(0)
        batches = [rng.choice(len(cache), args.batch_size, replace=False) for _ in range(64)]
        cursor = {"cache": 0, "sf": 0, "pipeline": 0}

        def next_batch(name: str) -> np.ndarray:
            cursor[name] += 1
            return batches[cursor[name] % len(batches)]

        def read_cache() -> object:
            return cache.batch(next_batch("cache"))

        def read_soundfile() -> object:
            return [soundfile.read(paths[i], dtype="float32")[0] for i in next_batch("sf")]

        def read_pipeline() -> object:
            return np.stack(
                [load_clip(paths[i], cache.sample_rate, cache.clip_samples)
                 for i in next_batch("pipeline")]
            )  # fmt: skip

        # The floor for any float32 batch: copying its bytes once, between kept buffers.
        floor_source = np.ones((args.batch_size, cache.clip_samples), np.float32)
        floor_target = np.empty_like(floor_source)

        def copy_batch_bytes() -> object:
            return np.copyto(floor_target, floor_source)

        decode_repeats = max(3, args.batches // 4)
        cache_s = timed(read_cache, args.batches)
        floor_s = timed(copy_batch_bytes, args.batches)
        soundfile_s = timed(read_soundfile, decode_repeats)
        pipeline_s = timed(read_pipeline, decode_repeats)

    build_rate = len(cache) / build_seconds
    rows = [
        ("cache build (all cores)", f"{build_rate:9.0f} clips/s",
         f"{build_rate / serial_clips_per_s:6.2f}x vs serial decode"),
        ("serial decode+resample+pad", f"{serial_clips_per_s:9.0f} clips/s", "reference"),
        (f"batch {args.batch_size} from cache ({args.dtype})", f"{cache_s * 1e3:9.2f} ms", ""),
        ("copy of the batch's float32 bytes", f"{floor_s * 1e3:9.2f} ms",
         f"cache read = {cache_s / floor_s:4.2f}x this floor"),
        (f"batch {args.batch_size} soundfile.read", f"{soundfile_s * 1e3:9.2f} ms",
         f"{soundfile_s / cache_s:6.1f}x slower than cache"),
        (f"batch {args.batch_size} decode+resample+pad", f"{pipeline_s * 1e3:9.2f} ms",
         f"{pipeline_s / cache_s:6.1f}x slower than cache"),
    ]  # fmt: skip
    print(f"FSDD: {len(cache)} clips, {cache.clip_samples} samples at {cache.sample_rate} Hz, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'measurement':42s} {'value':>16s}  ratio")
    for name, value, ratio in rows:
        print(f"{name:42s} {value:>16s}  {ratio}")
    print(
        json.dumps(
            {
                "cache_read_vs_decode": round(soundfile_s / cache_s, 1),
                "cache_read_vs_decode_pipeline": round(pipeline_s / cache_s, 1),
                "cache_build_clips_per_s": round(build_rate, 1),
                "cache_build_vs_serial": round(build_rate / serial_clips_per_s, 2),
                "cache_batch_ms": round(cache_s * 1e3, 3),
                "float32_copy_floor_ms": round(floor_s * 1e3, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
