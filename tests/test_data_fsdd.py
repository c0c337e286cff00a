"""The data layer on the real Free Spoken Digit Dataset: cache, split, resampling, reuse."""

from __future__ import annotations

import json
import pickle
import shutil
import time
from pathlib import Path

import librosa
import numpy as np
import pytest
import scipy.signal
import soundfile
import torch

from core.config import DataConfig
from core.data import AudioCache, CacheDataset, DatasetError, make_split, open_cache
from core.data.cache import describe


@pytest.fixture(scope="session")
def fsdd_config(fsdd_root: Path, cache_dir: Path) -> DataConfig:
    return DataConfig(dataset="fsdd", root=fsdd_root, cache_dir=cache_dir)


@pytest.fixture(scope="session")
def fsdd_cache(fsdd_config: DataConfig) -> AudioCache:
    """The whole real FSDD, decoded once for the session (a few seconds on 2 cores)."""
    return open_cache(fsdd_config, progress=False)


def test_fsdd_cache_holds_every_clip_at_16k_one_second(fsdd_cache: AudioCache) -> None:
    assert len(fsdd_cache) == 3_000
    assert fsdd_cache.audio.shape == (3_000, 16_000)
    assert fsdd_cache.audio.dtype == np.int16  # the default storage
    assert fsdd_cache.sample_rate == 16_000 and fsdd_cache.clip_samples == 16_000
    assert fsdd_cache.class_names[:3] == ["zero", "one", "two"]
    assert np.bincount(fsdd_cache.labels).tolist() == [300] * 10
    assert fsdd_cache.excluded == []
    manifest = fsdd_cache.manifest
    assert manifest["split_counts"] == {"test": 300, "train": 2_700}
    assert manifest["fold_counts"] == {str(k): 500 for k in range(1, 7)}  # one per speaker
    assert len(manifest["content_hash"]) == 64
    # Labels come from the file names: digit_speaker_take.wav.
    files = fsdd_cache.files
    digits = np.array([int(Path(name).name.split("_")[0]) for name in files])
    assert np.array_equal(digits, fsdd_cache.labels)
    assert "3000 x 16000" in describe(fsdd_cache)


def test_official_split_is_takes_0_to_4_for_test(
    fsdd_cache: AudioCache, fsdd_config: DataConfig
) -> None:
    split = make_split(fsdd_cache, fsdd_config, seed=0)
    assert (split.train.size, split.val.size, split.test.size) == (2_700, 0, 300)
    takes = np.array([int(Path(name).stem.split("_")[2]) for name in fsdd_cache.files])
    assert set(takes[split.test]) == set(range(5))
    assert takes[split.train].min() == 5
    assert np.array_equal(split.train_labels, fsdd_cache.labels[split.train])


SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]  # folds 1..6


def test_quaclrs_speaker_folds_are_speaker_independent(
    fsdd_cache: AudioCache, fsdd_config: DataConfig
) -> None:
    speakers = np.array([Path(name).stem.split("_")[1] for name in fsdd_cache.files])
    assert np.array_equal(fsdd_cache.fold, [SPEAKERS.index(s) + 1 for s in speakers])
    tested = np.zeros(len(fsdd_cache), dtype=int)
    for k in range(1, 7):
        cfg = fsdd_config.model_copy(update={"split_scheme": "quaclrs", "fold": k})
        split = make_split(fsdd_cache, cfg, seed=0)
        assert (split.train.size, split.val.size, split.test.size) == (2_000, 500, 500)
        assert set(speakers[split.test]) == {SPEAKERS[k - 1]}
        assert set(speakers[split.val]) == {SPEAKERS[k - 2]}  # speaker 1 validates on 6
        assert set(speakers[split.train]).isdisjoint(speakers[np.r_[split.val, split.test]])
        assert np.bincount(fsdd_cache.labels[split.test]).tolist() == [50] * 10
        tested[split.test] += 1
    assert np.all(tested == 1)  # every clip is tested exactly once across the six folds
    with pytest.raises(DatasetError, match="remove data.fold"):
        make_split(fsdd_cache, fsdd_config.model_copy(update={"fold": 3}))


def test_max_clips_keeps_the_whole_test_speaker(fsdd_config: DataConfig) -> None:
    cfg = fsdd_config.model_copy(update={"split_scheme": "quaclrs", "fold": 4, "max_clips": 200})
    cache = open_cache(cfg, progress=False)
    assert len(cache) == 700 and int((cache.fold == 4).sum()) == 500  # nicolas, whole
    split = make_split(cache, cfg)
    assert split.test.size == 500 and split.train.size + split.val.size == 200
    assert {Path(cache.files[i]).stem.split("_")[1] for i in split.test} == {"nicolas"}


def test_label_fraction_hides_labels_but_keeps_the_clips(
    fsdd_cache: AudioCache, fsdd_config: DataConfig
) -> None:
    for fraction, expected in ((0.2, 540), (0.1, 270), (0.01, 27)):
        cfg = fsdd_config.model_copy(update={"label_fraction": fraction})
        split = make_split(fsdd_cache, cfg, seed=1)
        assert split.train.size == 2_700
        assert split.labeled.size == expected
        assert set(np.unique(split.train_labels)) <= set(range(10)) | {-1}


def test_resampling_preserves_the_spoken_digit(fsdd_cache: AudioCache, fsdd_root: Path) -> None:
    """A cached clip against librosa's own (polyphase) resampling of the raw 8 kHz file."""
    row = 123
    source, rate = soundfile.read(fsdd_root / fsdd_cache.files[row], dtype="float32")
    assert rate == 8_000
    reference = librosa.resample(source, orig_sr=8_000, target_sr=16_000, res_type="polyphase")
    length = min(reference.size, 16_000)
    cached = fsdd_cache.batch(np.array([row]))[0].numpy()[:length]
    reference = reference[:length]

    def log_mel(clip: np.ndarray) -> np.ndarray:
        # librosa's mel filterbank on a scipy STFT (librosa's own STFT path JIT-compiles
        # for ~15 s, which the test does not need).
        _, _, stft = scipy.signal.stft(clip, nperseg=512, noverlap=384)
        mel = librosa.filters.mel(sr=16_000, n_fft=512) @ np.abs(stft) ** 2
        return 10 * np.log10(mel + 1e-10)

    correlation = np.corrcoef(cached, reference)[0, 1]
    assert correlation > 0.99
    speech = log_mel(reference) > log_mel(reference).max() - 50  # bins that carry the digit
    assert np.abs(log_mel(cached) - log_mel(reference))[speech].mean() < 1.0  # dB
    # Nothing above the 4 kHz Nyquist of the source may appear after upsampling.
    spectrum = np.abs(np.fft.rfft(cached)) ** 2
    frequencies = np.fft.rfftfreq(cached.size, 1 / 16_000)
    assert spectrum[frequencies > 4_100].sum() < 1e-4 * spectrum.sum()


def test_batch_is_one_gather_equal_to_items(fsdd_cache: AudioCache) -> None:
    indices = np.random.default_rng(0).choice(len(fsdd_cache), 256, replace=False)
    batch = fsdd_cache.batch(indices)
    assert batch.shape == (256, 16_000) and batch.dtype == torch.float32
    assert batch.abs().max() <= 1.0
    dataset = CacheDataset(fsdd_cache, indices)
    waveform, label = dataset[7]
    assert torch.equal(waveform, batch[7])
    assert label.dtype == torch.int64 and int(label) == fsdd_cache.labels[indices[7]]
    waveform.add_(1.0)  # items are private copies: the shared cache must not change
    assert torch.equal(fsdd_cache.batch(indices[7:8])[0], batch[7])
    stored = batch[7].clone()
    batch.add_(1.0)  # and neither may a batch, which shares nothing with the memmap
    assert torch.equal(fsdd_cache.batch(indices[7:8])[0], stored)
    last = fsdd_cache.batch(np.array([-1, len(fsdd_cache) - 1]))  # numpy-style negatives
    assert torch.equal(last[0], last[1])
    with pytest.raises(IndexError):
        fsdd_cache.batch(np.array([3_000]))
    # Pickling (DataLoader workers, Ray) reopens the memmap instead of copying 90 MB.
    assert len(pickle.dumps(dataset)) < 200_000
    assert torch.equal(pickle.loads(pickle.dumps(dataset))[7][0], stored)


def test_second_open_reuses_the_cache(fsdd_cache: AudioCache, fsdd_config: DataConfig) -> None:
    stamp = (fsdd_cache.path / "audio.npy").stat().st_mtime_ns
    started = time.perf_counter()
    again = open_cache(fsdd_config, progress=False)
    assert time.perf_counter() - started < 2.0
    assert again.path == fsdd_cache.path
    assert (again.path / "audio.npy").stat().st_mtime_ns == stamp
    assert again.content_hash == fsdd_cache.content_hash


def test_changed_inputs_or_settings_build_a_new_cache(fsdd_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "fsdd"
    (root / "recordings").mkdir(parents=True)
    for name in sorted(p.name for p in (fsdd_root / "recordings").glob("*.wav"))[:40]:
        shutil.copy2(fsdd_root / "recordings" / name, root / "recordings" / name)
    cfg = DataConfig(dataset="fsdd", root=root, cache_dir=tmp_path / "cache")
    first = open_cache(cfg, progress=False)
    assert len(first) == 40
    assert open_cache(cfg, progress=False).path == first.path

    for dtype, tolerance in (("float16", 1e-3), ("float32", 1 / 32767)):
        other = open_cache(cfg.model_copy(update={"cache_dtype": dtype}), progress=False)
        assert other.path != first.path and other.audio.dtype == np.dtype(dtype)
        assert torch.allclose(
            other.batch(np.arange(40)), first.batch(np.arange(40)), atol=tolerance
        )

    rate48 = open_cache(
        cfg.model_copy(update={"sample_rate": 48_000, "crop": "center"}), progress=False
    )
    assert rate48.audio.shape == (40, 48_000) and rate48.path != first.path

    victim = root / "recordings" / first.files[0].split("/")[-1]
    victim.write_bytes(victim.read_bytes()[:-100] + bytes(100))  # same size, new content
    changed = open_cache(cfg, progress=False)
    assert changed.path != first.path
    assert changed.content_hash != first.content_hash
    manifest = json.loads((changed.path / "manifest.json").read_text())
    assert manifest["count"] == 40 and manifest["sample_rate"] == 16_000


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device"))],
)  # fmt: skip
def test_batch_on_a_device_matches_the_cpu_batch(fsdd_cache: AudioCache, device: str) -> None:
    indices = np.arange(0, 3_000, 97)
    on_device = fsdd_cache.batch(indices, device=device)
    assert on_device.device.type == device and on_device.dtype == torch.float32
    assert torch.equal(on_device.cpu(), fsdd_cache.batch(indices))
