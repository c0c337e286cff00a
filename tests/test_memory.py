"""The allocator tuning of core.memory, measured by page faults in fresh processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# A training-like loop: FD -> TM -> stft3 on 256 clips, whose 50 MB output is above any
# mmap threshold glibc would pick by itself. Counts minor page faults and the resident
# size over the last iterations, once the heap has reached its steady state.
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
for step in range(24):
    if step == 12:
        faults, resident = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, resident_mb()
    features = frontend(augment(clips, generator))
    del features
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
print(json.dumps({"tuned": tuned, "faults": faults, "growth_mb": resident_mb() - resident}))
"""


def _probe(mode: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tunes glibc's malloc")
def test_kept_pages_spare_each_batch_its_page_faults_without_growing():
    default, tuned = _probe("default"), _probe("tune")
    # Untuned, each batch maps its 50 MB output afresh: ~12,000 faults a batch.
    assert default["faults"] > 12 * 5_000, default
    assert tuned["tuned"] is True
    assert tuned["faults"] < default["faults"] / 20, (tuned, default)
    assert tuned["growth_mb"] < 50, "the kept heap should be reused, not grow batch by batch"
