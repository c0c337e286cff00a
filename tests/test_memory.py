"""The allocator tuning of core.memory, measured by page faults in fresh processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# A training-like loop: FD -> TM -> stft3 on 256 clips, whose 50 MB output is above any
# mmap threshold glibc would pick by itself. Takes the median of the minor page faults per
# batch, and the growth of the resident size, over the batches after the heap has settled.
_PROBE = """
import json, resource, sys, torch
from core.augment import build_signal_pipeline
from core.config import AugmentConfig, FrontendConfig
from core.features import build_frontend
from core.memory import keep_freed_pages
tuned = keep_freed_pages() if sys.argv[1] == "tune" else False
clips = torch.randn(256, 16000) * 0.1
augment = build_signal_pipeline(AugmentConfig(pipeline=["FD", "TM"]), 16000)
frontend = build_frontend(FrontendConfig(name="stft3"), 16000)
generator = torch.Generator().manual_seed(0)
def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
faults = []
for step in range(24):
    if step == 8:
        resident = resident_mb()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    features = frontend(augment(clips, generator))
    del features
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
median = sorted(faults[8:])[len(faults[8:]) // 2]
print(json.dumps({"tuned": tuned, "faults": median, "growth_mb": resident_mb() - resident}))
"""


def _probe(mode: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tunes glibc's malloc")
def test_kept_pages_spare_each_batch_its_page_faults_without_growing():
    default, tuned = _probe("default"), _probe("tune")
    # Untuned, each batch maps its 50 MB output afresh: over 12,000 faults a batch.
    assert default["faults"] > 5_000, default
    assert tuned["tuned"] is True
    assert tuned["faults"] < default["faults"] / 20, (tuned, default)
    assert tuned["growth_mb"] < 100, "the kept heap should be reused, not grow batch by batch"


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
