"""QUACLRS's 13-class UrbanSound8K + sireNNet dataset, on written fixtures in both layouts.

UrbanSound8K is written in its official layout (CSV + ``audio/fold{k}``); sireNNet in its
published one (``ambulance/``, ``firetruck/``, ``police/``, ``traffic/`` of ``.wav``),
with the rates and widths of real recordings.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest

from core.config import ConfigError, DataConfig, ExperimentConfig
from core.data import DatasetError, DatasetNotFoundError, get_spec, make_split, open_cache
from core.data.cache import ExcludedFilesWarning
from core.data.urbansound8k_sirennet import CLASS_NAMES, sirennet_folds
from tests.test_data_layouts import write_tone

URBAN = ["air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling",
         "engine_idling", "gun_shot", "jackhammer", "siren", "street_music"]  # fmt: skip
SIRENNET = {"ambulance": 13, "firetruck": 10, "police": 11, "traffic": 12}  # clips per class


@pytest.fixture(scope="module")
def urban_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two clips per fold; classes cycle so fold k holds class k % 10 (siren in fold 8)."""
    root = tmp_path_factory.mktemp("urbansound8k")
    rows = []
    for fold in range(1, 11):
        for k in range(2):
            class_id = (fold + 10 * k) % 10
            name = f"{200 + fold}-{class_id}-0-{k}.wav"
            write_tone(root / "audio" / f"fold{fold}" / name, 300 + 30 * class_id, 44_100, 0.3)
            rows.append([name, 200 + fold, 0.0, 0.3, 1, fold, class_id, URBAN[class_id]])
    (root / "metadata").mkdir()
    with (root / "metadata" / "UrbanSound8K.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]
        )
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def sirennet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sirennet")
    formats = [(48_000, "PCM_16", 2), (44_100, "PCM_24", 1), (22_050, "PCM_16", 1)]
    for c, (name, count) in enumerate(SIRENNET.items()):
        for i in range(count):
            rate, subtype, channels = formats[i % len(formats)]
            write_tone(root / name / f"sound_{i + 1}.wav", 600 + 100 * c, rate, 0.3,
                       channels, subtype)  # fmt: skip
    (root / "ambulance" / ".DS_Store").write_bytes(b"\0" * 16)  # not a clip
    return root


def config(urban: Path, extra: Path, cache: Path, **fields: object) -> DataConfig:
    return DataConfig(dataset="urbansound8k_sirennet", root=urban, extra_root=extra,
                      cache_dir=cache, **fields)  # fmt: skip


def test_thirteen_classes_without_siren(
    urban_root: Path, sirennet_root: Path, tmp_path: Path
) -> None:
    cache = open_cache(config(urban_root, sirennet_root, tmp_path), progress=False)
    assert cache.class_names == CLASS_NAMES and len(CLASS_NAMES) == 13
    assert "siren" not in cache.class_names
    assert cache.class_names[8:] == ["street_music", "ambulance", "firetruck", "police", "traffic"]
    assert len(cache) == 18 + sum(SIRENNET.values()) and cache.excluded == []
    files = cache.files
    assert not any("-8-0-" in name for name in files)  # UrbanSound8K's siren clips are out
    by_name = dict(zip(files, cache.labels.tolist(), strict=True))
    assert by_name["audio/fold9/209-9-0-0.wav"] == 8  # street_music: classID 9 -> label 8
    assert by_name["audio/fold3/203-3-0-0.wav"] == 3  # IDs below siren keep their label
    assert by_name["sirennet/police/sound_4.wav"] == 11
    assert np.bincount(cache.labels, minlength=13)[9:].tolist() == list(SIRENNET.values())
    assert cache.manifest["extra_root"] == str(sirennet_root)
    # Every clip, stereo 48 kHz included, decoded to the 0.3 s tone at its level.
    peaks = np.abs(cache.batch(np.arange(len(cache))).numpy()[:, :4_000]).max(axis=1)
    assert peaks == pytest.approx(0.4, abs=0.03)


def test_sirennet_folds_are_balanced_seeded_and_split_by_quaclrs(
    urban_root: Path, sirennet_root: Path, tmp_path: Path
) -> None:
    cfg = config(urban_root, sirennet_root, tmp_path, split_scheme="quaclrs", fold=3)
    cache = open_cache(cfg, progress=False)
    assert get_spec("urbansound8k_sirennet").num_folds == 10
    siren = np.flatnonzero(cache.labels >= 9)
    for label in range(9, 13):
        counts = np.bincount(cache.fold[cache.labels == label], minlength=11)[1:]
        assert counts.max() - counts.min() <= 1 and counts.min() >= 1  # 10-13 clips, 10 folds
    # The assignment is a fixed function of the sorted names: the same on every call, and
    # not simply the name order (a shuffle, so fold 1 is not "the first ten files").
    assert np.array_equal(sirennet_folds(13, 0), sirennet_folds(13, 0))
    assert not np.array_equal(sirennet_folds(13, 0), np.arange(13) % 10 + 1)
    assert not np.array_equal(sirennet_folds(13, 0), sirennet_folds(13, 1))
    ambulance = [i for i in siren if cache.files[i].startswith("sirennet/ambulance/")]
    assert np.array_equal(cache.fold[ambulance], sirennet_folds(13, 0))
    # UrbanSound8K clips keep their own folds.
    urban = np.flatnonzero(cache.labels < 9)
    assert all(cache.files[i].split("/")[1] == f"fold{cache.fold[i]}" for i in urban)

    split = make_split(cache, cfg)
    assert set(cache.fold[split.test].tolist()) == {3}
    assert set(cache.fold[split.val].tolist()) == {2}
    assert set(cache.labels[split.test].tolist()) >= {9, 10, 11, 12}  # every new class tested
    assert split.train.size + split.val.size + split.test.size == len(cache)


def test_missing_or_misshapen_sirennet_folder_is_a_clear_error(
    urban_root: Path, sirennet_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLARLAB_DATA", str(tmp_path / "data"))
    with pytest.raises(DatasetNotFoundError) as caught:  # default: $CLARLAB_DATA/sirennet
        open_cache(DataConfig(dataset="urbansound8k_sirennet", root=urban_root,
                              cache_dir=tmp_path / "cache"), progress=False)  # fmt: skip
    message = str(caught.value)
    for needle in (str(tmp_path / "data" / "sirennet"), "$CLARLAB_DATA/sirennet",
                   "cannot download", "10.1038/s41597-022-01727-2", "data.extra_root"):  # fmt: skip
        assert needle in message
    # Pointed at the folder above the published one: the class folders are not found.
    parent = tmp_path / "download"
    (parent / "sireNNet").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"lacks the sireNNet class folder.*'sireNNet'"):
        open_cache(config(urban_root, parent, tmp_path / "cache"), progress=False)
    empty = tmp_path / "partial"
    for name in SIRENNET:
        (empty / name).mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"partial/ambulance holds no \.wav files"):
        open_cache(config(urban_root, empty, tmp_path / "cache"), progress=False)


def test_extra_root_on_a_dataset_that_reads_none_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.extra_root is set but dataset 'esc50'"):
        ExperimentConfig.from_dict({"data": {"dataset": "esc50", "extra_root": str(tmp_path)}})


def test_a_corrupt_sirennet_clip_is_excluded_and_named(
    urban_root: Path, sirennet_root: Path, tmp_path: Path
) -> None:
    extra = tmp_path / "sirennet"
    for name in SIRENNET:
        (extra / name).mkdir(parents=True)
        for clip in (sirennet_root / name).glob("*.wav"):
            (extra / name / clip.name).symlink_to(clip)
    (extra / "traffic" / "broken.wav").write_bytes(b"\x00not audio" * 40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = open_cache(config(urban_root, extra, tmp_path / "cache"), progress=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, ExcludedFilesWarning)]
    assert len(messages) == 1 and "BytesIO" not in messages[0]
    assert cache.excluded == [{
        "path": "sirennet/traffic/broken.wav",
        "reason": "sirennet/traffic/broken.wav: cannot decode: Format not recognised.",
    }]  # fmt: skip
    assert len(cache) == 18 + sum(SIRENNET.values())
