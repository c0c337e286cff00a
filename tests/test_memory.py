"""The allocator tuning of core.memory, measured by page faults in fresh processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# One batch's buffers, allocated, written and freed again and again: a 50 MB tensor (a
# 256-clip stft3 output, above the largest mmap threshold glibc picks by itself, 32 MB) and
# a 16 MB intermediate. Reports, over the batches after the first few, the FEWEST minor page
# faults of a batch (load can add faults to a batch, never take them away, so the minimum is
# what the allocator itself costs), the growth of the resident size, and how many more bytes
# glibc holds in mmap'd chunks while the batch's buffers are alive than before the first
# batch (mallinfo2; chunks mapped while torch was imported, before the tuning, stay).
_PROBE = """
import ctypes, json, resource, sys, torch
from core.memory import keep_freed_pages
tuned = keep_freed_pages() if sys.argv[1] == "tune" else False
torch.set_num_threads(1)
libc = ctypes.CDLL("libc.so.6")
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
def mmapped_bytes():
    if not hasattr(libc, "mallinfo2"):  # glibc < 2.33
        return None
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2().hblkhd
def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
baseline = mmapped_bytes()
faults, mapped = [], []
for step in range(16):
    if step == 4:
        resident = resident_mb()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    output = torch.empty(50 * 2**20 // 4).fill_(1.0)
    scratch = torch.empty(16 * 2**20 // 4).fill_(2.0)
    mapped.append(None if baseline is None else mmapped_bytes() - baseline)
    del output, scratch
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"tuned": tuned, "faults": min(faults[4:]), "mmapped": mapped[-1],
                  "growth_mb": resident_mb() - resident}))
"""

# A 50 MB buffer is 12,800 pages of 4 KB: untuned, glibc maps it afresh for every batch.
_PAGES_PER_BATCH = 50 * 2**20 // 4096
_BATCH_MB = 50 + 16 + 4  # one batch's two buffers, and a little slack


def _probe(mode: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _spared(default: dict[str, float], tuned: dict[str, float]) -> bool:
    """Whether the tuned process reused its pages where the untuned one faulted them in:
    untuned, glibc serves the 50 MB buffer with mmap (and unmaps it on free), tuned it
    serves everything from the heap; the tuned process then faults (almost) nothing and
    does not grow batch after batch, where the untuned one faults every page of the buffer
    in again."""
    mechanism = default["mmapped"] is None or (
        default["mmapped"] >= 50 * 2**20 and tuned["mmapped"] <= 0
    )
    return (
        mechanism
        and default["faults"] >= _PAGES_PER_BATCH / 2
        and tuned["faults"] * 20 < default["faults"]
        # Over the 12 measured batches the heap may extend once (the allocator places a
        # 50 MB buffer past the 16 MB one); what must not happen is growth every batch.
        and tuned["growth_mb"] < _BATCH_MB
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tunes glibc's malloc")
def test_kept_pages_spare_each_batch_its_page_faults_without_growing():
    # A tuned and an untuned process measured in the same run, and measured again (up to
    # three times) before failing, in case a busy machine disturbed one of the two.
    default, tuned = _probe("default"), _probe("tune")
    assert tuned["tuned"] is True, "keep_freed_pages should tune glibc's malloc here"
    attempts = [(default, tuned)]
    while not _spared(*attempts[-1]) and len(attempts) < 3:
        attempts.append((_probe("default"), _probe("tune")))
    assert _spared(*attempts[-1]), f"(untuned, tuned) per attempt: {attempts}"


_RELEASE_PROBE = """
import gc, json, time, weakref
from core.memory import release_freed_memory
import torch  # a large heap of long-lived objects, as in a trial actor
release_freed_memory()  # the first call freezes what exists
class Node:
    pass
def garbage():
    node = Node()
    node.self = node  # a reference cycle: only the collector frees it
    return weakref.ref(node)
gone = garbage()
started = time.perf_counter()
release_freed_memory()
print(json.dumps({"frozen": gc.get_freeze_count(), "collected": gone() is None,
                  "seconds": time.perf_counter() - started}))
"""


def test_release_collects_new_garbage_without_rescanning_the_frozen_heap():
    done = subprocess.run(
        [sys.executable, "-c", _RELEASE_PROBE], capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["frozen"] > 10_000, "torch's objects should be in the permanent generation"
    assert result["collected"], "garbage made after the freeze must still be collected"
