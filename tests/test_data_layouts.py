"""Every dataset's official layout, split and bad-input behaviour, on small written fixtures.

The fixtures follow each dataset's real on-disk layout and metadata (file names, list files,
CSV columns, JSON keys) with generated tones in the formats the real datasets use (8 to
48 kHz, 8/16/24-bit and float, mono and stereo).
"""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile

from core.config import ConfigError, DataConfig, ExperimentConfig
from core.data import (
    DATASETS,
    DatasetError,
    DatasetNotFoundError,
    get_spec,
    make_split,
    open_cache,
)
from core.data.cache import ExcludedFilesWarning


def write_tone(
    path: Path,
    frequency: float,
    rate: int = 16_000,
    seconds: float = 0.25,
    channels: int = 1,
    subtype: str = "PCM_16",
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    time = np.arange(round(rate * seconds)) / rate
    signal = 0.4 * np.sin(2 * np.pi * frequency * time)
    data = np.stack([signal] * channels, axis=1) if channels > 1 else signal
    soundfile.write(path, data, rate, subtype=subtype)


def config(dataset: str, root: Path, cache: Path, **fields: object) -> DataConfig:
    return DataConfig(dataset=dataset, root=root, cache_dir=cache, **fields)


# --- Speech Commands ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def speech_commands_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("speech_commands")
    words = ["zero", "one", "two", "nine", "yes", "backward"]
    for w, word in enumerate(words):
        for take in range(3):
            write_tone(root / word / f"spk{take}_nohash_{take}.wav", 200 + 50 * w)
    write_tone(root / "_background_noise_" / "white_noise.wav", 1000, seconds=3.0)
    (root / "_background_noise_" / "README.md").write_text("noise")
    (root / "LICENSE").write_text("CC BY 4.0")
    (root / "validation_list.txt").write_text("zero/spk1_nohash_1.wav\nyes/spk1_nohash_1.wav\n")
    (root / "testing_list.txt").write_text("zero/spk2_nohash_2.wav\none/spk2_nohash_2.wav\n")
    return root


def test_speech_commands_official_lists_and_background_excluded(
    speech_commands_root: Path, tmp_path: Path
) -> None:
    cfg = config("speech_commands", speech_commands_root, tmp_path)
    cache = open_cache(cfg, progress=False)
    assert len(cache) == 18 and len(cache.class_names) == 35
    assert cache.audio.shape == (18, 16_000)
    assert not any("_background_noise_" in name for name in cache.files)
    assert cache.manifest["split_counts"] == {"test": 2, "train": 14, "validation": 2}
    assert cache.split[cache.files.index("zero/spk1_nohash_1.wav")] == "validation"
    assert cache.class_names[cache.labels[cache.files.index("yes/spk0_nohash_0.wav")]] == "yes"
    split = make_split(cache, cfg)
    assert (split.train.size, split.val.size, split.test.size) == (14, 2, 2)


def test_speech_commands_10_keeps_the_digits_labelled_by_value(
    speech_commands_root: Path, tmp_path: Path
) -> None:
    cache = open_cache(config("speech_commands_10", speech_commands_root, tmp_path), False)
    assert len(cache) == 12 and len(cache.class_names) == 10
    assert sorted(set(cache.labels.tolist())) == [0, 1, 2, 9]
    assert cache.class_names[9] == "nine"


def test_max_clips_subsamples_deterministically(speech_commands_root: Path, tmp_path: Path) -> None:
    cfg = config("speech_commands", speech_commands_root, tmp_path, max_clips=5)
    first, second = open_cache(cfg, progress=False), open_cache(cfg, progress=False)
    # 5 clips of the training/validation pool, plus the whole test split (2 clips).
    assert len(first) == 7 and first.files == second.files and first.path == second.path
    assert (first.split == "test").sum() == 2 and (first.split != "test").sum() == 5


def test_concurrent_opens_build_once(speech_commands_root: Path, tmp_path: Path) -> None:
    cfg = config("speech_commands", speech_commands_root, tmp_path)
    with ThreadPoolExecutor(max_workers=3) as pool:
        caches = list(pool.map(lambda _: open_cache(cfg, progress=False), range(3)))
    assert len({cache.path for cache in caches}) == 1
    built = [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")]
    assert built == [caches[0].path.name]  # one cache, no staging folder left behind


def test_speech_commands_unknown_word_folder_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "sc"
    write_tone(root / "zeroo" / "a_nohash_0.wav", 300)
    (root / "validation_list.txt").write_text("")
    (root / "testing_list.txt").write_text("")
    with pytest.raises(DatasetError, match=r"\['zeroo'\].*valid words: backward"):
        open_cache(config("speech_commands", root, tmp_path / "cache"), progress=False)


def test_speech_commands_listed_but_missing_files_are_excluded_and_warned(
    tmp_path: Path,
) -> None:
    root = tmp_path / "sc"
    for word in ("zero", "one", "yes"):
        for take in range(2):
            write_tone(root / word / f"spk{take}_nohash_{take}.wav", 300)
    (root / "testing_list.txt").write_text(
        "zero/spk0_nohash_0.wav\nzero/gone_nohash_0.wav\nyes/gone_nohash_0.wav\n"
        "one/both_nohash_0.wav\n"
    )
    (root / "validation_list.txt").write_text(
        "one/spk0_nohash_0.wav\none/gone_nohash_1.wav\none/both_nohash_0.wav\n"
    )
    with pytest.warns(ExcludedFilesWarning, match=r"4 file\(s\) excluded") as caught:
        cache = open_cache(config("speech_commands", root, tmp_path / "cache"), False)
    assert len(cache) == 6
    assert cache.manifest["split_counts"] == {"test": 1, "train": 4, "validation": 1}
    assert cache.excluded == [
        {"path": "one/both_nohash_0.wav", "reason": "listed in testing_list.txt but missing"},
        {"path": "one/gone_nohash_1.wav", "reason": "listed in validation_list.txt but missing"},
        {"path": "yes/gone_nohash_0.wav", "reason": "listed in testing_list.txt but missing"},
        {"path": "zero/gone_nohash_0.wav", "reason": "listed in testing_list.txt but missing"},
    ]
    manifest = json.loads((cache.path / "manifest.json").read_text())
    assert manifest["excluded"] == cache.excluded
    assert "zero/gone_nohash_0.wav (listed in testing_list.txt but missing)" in str(
        caught[0].message
    )
    # SC-10 has no "yes": that word's missing entry is not one of its clips.
    with pytest.warns(ExcludedFilesWarning, match=r"3 file\(s\) excluded"):
        digits = open_cache(config("speech_commands_10", root, tmp_path / "cache"), False)
    assert "yes/gone_nohash_0.wav" not in {entry["path"] for entry in digits.excluded}
    with pytest.raises(DatasetError, match=r"zero/gone_nohash_0\.wav.*data\.strict=false"):
        open_cache(config("speech_commands", root, tmp_path / "cache", strict=True), False)
    # Restoring the file changes the listing, so the next open builds a cache without it.
    write_tone(root / "zero" / "gone_nohash_0.wav", 300)
    with pytest.warns(ExcludedFilesWarning, match=r"3 file\(s\) excluded"):
        restored = open_cache(config("speech_commands", root, tmp_path / "cache"), False)
    assert restored.path != cache.path and restored.manifest["split_counts"]["test"] == 2


# --- ESC-50 / ESC-10 ------------------------------------------------------------------------
ESC_CLASSES = {0: ("dog", True), 1: ("rooster", True), 2: ("pig", False), 10: ("rain", True)}


@pytest.fixture(scope="module")
def esc50_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("esc50")
    rows = []
    for fold in range(1, 6):
        for target, (category, esc10) in ESC_CLASSES.items():
            name = f"{fold}-{1000 + target}-A-{target}.wav"
            write_tone(root / "audio" / name, 300 + 20 * target, rate=44_100, channels=2)
            rows.append([name, fold, target, category, esc10, f"{1000 + target}", "A"])
    (root / "meta").mkdir()
    with (root / "meta" / "esc50.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        writer.writerows(rows)
    return root


def test_esc50_folds_classes_and_paper_split(esc50_root: Path, tmp_path: Path) -> None:
    cfg = config("esc50", esc50_root, tmp_path, split_scheme="esc50_paper")
    cache = open_cache(cfg, progress=False)
    assert len(cache) == 20 and cache.clip_samples == 5 * 16_000
    assert cache.class_names == ["dog", "rooster", "pig", "rain"]
    assert cache.split is None and sorted(set(cache.fold.tolist())) == [1, 2, 3, 4, 5]
    split = make_split(cache, cfg)
    assert set(cache.fold[split.train].tolist()) == {1, 2, 3, 4}
    assert set(cache.fold[split.test].tolist()) == {5} and split.val.size == 0
    official = make_split(cache, cfg.model_copy(update={"split_scheme": "official"}))
    assert np.array_equal(official.test, split.test)  # default test fold = the last one
    with pytest.raises(DatasetError, match="always tests on fold 5"):
        make_split(cache, cfg.model_copy(update={"fold": 2}))


def test_esc10_is_the_flagged_subset_renumbered(esc50_root: Path, tmp_path: Path) -> None:
    cache = open_cache(config("esc10", esc50_root, tmp_path), progress=False)
    assert len(cache) == 15 and cache.class_names == ["dog", "rooster", "rain"]
    assert sorted(set(cache.labels.tolist())) == [0, 1, 2]


# --- UrbanSound8K -----------------------------------------------------------------------------
US8K_FORMATS = [  # rates, widths and channel counts found in the real dataset
    (44_100, "PCM_16", 2),
    (48_000, "PCM_24", 2),
    (22_050, "FLOAT", 1),
    (8_000, "PCM_U8", 1),
    (96_000, "PCM_24", 1),
]


@pytest.fixture(scope="module")
def urbansound_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("urbansound8k")
    rows = []
    names = ["air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling",
             "engine_idling", "gun_shot", "jackhammer", "siren", "street_music"]  # fmt: skip
    for fold in range(1, 11):
        for k in range(2):
            class_id = (fold + k) % 10
            rate, subtype, channels = US8K_FORMATS[(fold + k) % len(US8K_FORMATS)]
            name = f"{100 + fold}-{class_id}-0-{k}.wav"
            write_tone(root / "audio" / f"fold{fold}" / name, 500, rate, 0.3, channels, subtype)
            rows.append([name, 100 + fold, 0.0, 0.3, 1, fold, class_id, names[class_id]])
    (root / "metadata").mkdir()
    with (root / "metadata" / "UrbanSound8K.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]
        )
        writer.writerows(rows)
    return root


def test_urbansound8k_quaclrs_folds_and_mixed_formats(
    urbansound_root: Path, tmp_path: Path
) -> None:
    cfg = config("urbansound8k", urbansound_root, tmp_path, split_scheme="quaclrs", fold=1)
    cache = open_cache(cfg, progress=False)
    assert len(cache) == 20 and cache.clip_samples == 4 * 16_000
    assert cache.excluded == []
    batch = cache.batch(np.arange(20)).numpy()
    # Every format decoded to the same 0.3 s tone at the same level (stereo mixes equal).
    assert np.abs(batch[:, :4_000]).max(axis=1) == pytest.approx(0.4, abs=0.03)
    assert np.all(batch[:, 5_000:] == 0)
    split = make_split(cache, cfg)
    assert set(cache.fold[split.test].tolist()) == {1}
    assert set(cache.fold[split.val].tolist()) == {10}  # fold 1's validation wraps to 10
    assert set(cache.fold[split.train].tolist()) == set(range(2, 10))
    fold5 = make_split(cache, cfg.model_copy(update={"fold": 5}))
    assert set(cache.fold[fold5.val].tolist()) == {4}
    with pytest.raises(DatasetError, match=r"valid: 1\.\.10"):
        make_split(cache, cfg.model_copy(update={"fold": 11}))
    with pytest.raises(DatasetError, match="needs esc50 or esc10"):
        make_split(cache, cfg.model_copy(update={"split_scheme": "esc50_paper", "fold": None}))


def test_center_crop_at_48k_for_quaclrs(urbansound_root: Path, tmp_path: Path) -> None:
    cfg = config("urbansound8k", urbansound_root, tmp_path, sample_rate=48_000,
                 clip_seconds=0.1, crop="center")  # fmt: skip
    cache = open_cache(cfg, progress=False)
    assert cache.audio.shape == (20, 4_800) and cache.sample_rate == 48_000
    assert np.all(np.abs(cache.batch(np.arange(20)).numpy()[:, -100:]).max(axis=1) > 0.1)


def test_unreadable_last_fold_is_an_error_not_a_silent_fold_9(
    urbansound_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "us8k"
    shutil.copytree(urbansound_root, root)
    for wav in (root / "audio" / "fold10").glob("*.wav"):
        wav.write_bytes(b"not a wav file" * 30)
    cfg = config("urbansound8k", root, tmp_path / "cache")
    with pytest.warns(ExcludedFilesWarning, match=r"2 file\(s\) excluded"):
        cache = open_cache(cfg, progress=False)
    assert sorted(set(cache.fold.tolist())) == list(range(1, 10))
    manifest = str(cache.path / "manifest.json")
    # official: the default test fold is the declared last fold (10), which has no clips.
    with pytest.raises(DatasetError) as caught:
        make_split(cache, cfg)
    message = str(caught.value)
    for needle in ("urbansound8k", "test fold 10 has no clips", "excluded", manifest):
        assert needle in message
    quaclrs = cfg.model_copy(update={"split_scheme": "quaclrs"})
    with pytest.raises(DatasetError, match="urbansound8k: the validation fold 10 has no clips"):
        make_split(cache, quaclrs.model_copy(update={"fold": 1}))
    with pytest.raises(DatasetError, match="urbansound8k: the test fold 10 has no clips"):
        make_split(cache, quaclrs.model_copy(update={"fold": 10}))
    with pytest.raises(DatasetError, match=r"valid: 1\.\.10"):  # declared, not cached, folds
        make_split(cache, quaclrs.model_copy(update={"fold": 11}))
    fold5 = make_split(cache, quaclrs.model_copy(update={"fold": 5}))
    assert set(cache.fold[fold5.test].tolist()) == {5}
    assert set(cache.fold[fold5.val].tolist()) == {4}
    assert set(cache.fold[fold5.train].tolist()) == {1, 2, 3, 6, 7, 8, 9}
    official9 = make_split(cache, cfg.model_copy(update={"fold": 9}))
    assert set(cache.fold[official9.test].tolist()) == {9} and official9.train.size == 16


# --- FSDD speaker folds -------------------------------------------------------------------------
FSDD_SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]


@pytest.fixture(scope="module")
def fsdd_fixture_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every speaker, digits 0-2, one test take (2) and three training takes (5-7)."""
    root = tmp_path_factory.mktemp("fsdd")
    for s, speaker in enumerate(FSDD_SPEAKERS):
        for digit in range(3):
            for take in (2, 5, 6, 7):
                write_tone(root / "recordings" / f"{digit}_{speaker}_{take}.wav",
                           200 + 40 * s + 10 * digit, rate=8_000, seconds=0.2)  # fmt: skip
    return root


def speakers_of(cache_files: list[str], indices: np.ndarray) -> set[str]:
    return {Path(cache_files[i]).stem.split("_")[1] for i in indices}


def test_fsdd_speaker_folds_next_to_the_takes_split(
    fsdd_fixture_root: Path, tmp_path: Path
) -> None:
    cfg = config("fsdd", fsdd_fixture_root, tmp_path)
    cache = open_cache(cfg, progress=False)
    assert get_spec("fsdd").num_folds == 6
    files = cache.files
    for row, name in enumerate(files):  # fold = position of the speaker in sorted order
        assert cache.fold[row] == FSDD_SPEAKERS.index(Path(name).stem.split("_")[1]) + 1
    assert cache.manifest["fold_counts"] == {str(k): 12 for k in range(1, 7)}
    assert cache.manifest["split_counts"] == {"test": 18, "train": 54}

    official = make_split(cache, cfg)  # still the takes split, across all speakers
    assert (official.train.size, official.val.size, official.test.size) == (54, 0, 18)
    assert speakers_of(files, official.test) == set(FSDD_SPEAKERS)

    for k, speaker in enumerate(FSDD_SPEAKERS, start=1):
        split = make_split(cache, cfg.model_copy(update={"split_scheme": "quaclrs", "fold": k}))
        assert speakers_of(files, split.test) == {speaker}
        assert speakers_of(files, split.val) == {FSDD_SPEAKERS[k - 2]}  # 1 wraps to 6
        train_speakers = speakers_of(files, split.train)
        assert len(train_speakers) == 4
        assert train_speakers.isdisjoint(speakers_of(files, np.r_[split.val, split.test]))
        assert (split.train.size, split.val.size, split.test.size) == (48, 12, 12)

    with pytest.raises(DatasetError, match=r"remove data\.fold, or set split_scheme='quaclrs'"):
        make_split(cache, cfg.model_copy(update={"fold": 2}))
    with pytest.raises(DatasetError, match=r"valid: 1\.\.6"):
        make_split(cache, cfg.model_copy(update={"split_scheme": "quaclrs", "fold": 7}))


def test_fsdd_max_clips_keeps_the_whole_test_speaker(
    fsdd_fixture_root: Path, tmp_path: Path
) -> None:
    cfg = config("fsdd", fsdd_fixture_root, tmp_path, max_clips=10,
                 split_scheme="quaclrs", fold=3)  # fmt: skip
    cache = open_cache(cfg, progress=False)
    assert len(cache) == 22 and int((cache.fold == 3).sum()) == 12  # all of lucas, + 10
    split = make_split(cache, cfg)
    assert split.test.size == 12 and speakers_of(cache.files, split.test) == {"lucas"}
    official = open_cache(cfg.model_copy(update={"split_scheme": "official", "fold": None}), False)
    assert len(official) == 28 and int((official.split == "test").sum()) == 18
    assert official.path != cache.path  # a different subsample is a different cache


# --- NSynth -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nsynth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nsynth")
    notes = {"train": [(0, 40), (3, 60), (10, 64)], "valid": [(3, 61), (5, 72)], "test": [(9, 30)]}
    families = ["bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed",
                "string", "synth_lead", "vocal"]  # fmt: skip
    for subset, entries in notes.items():
        examples = {}
        for n, (family, pitch) in enumerate(entries):
            note_str = f"{families[family]}_acoustic_{n:03d}-{pitch:03d}-100"
            write_tone(root / f"nsynth-{subset}" / "audio" / f"{note_str}.wav",
                       440 * 2 ** ((pitch - 69) / 12), seconds=0.5)  # fmt: skip
            examples[note_str] = {
                "note": n, "note_str": note_str, "instrument": n,
                "instrument_str": f"{families[family]}_acoustic_{n:03d}", "pitch": pitch,
                "velocity": 100, "sample_rate": 16000, "qualities": [0] * 10,
                "qualities_str": [], "instrument_family": family,
                "instrument_family_str": families[family], "instrument_source": 0,
                "instrument_source_str": "acoustic",
            }  # fmt: skip
        (root / f"nsynth-{subset}" / "examples.json").write_text(json.dumps(examples))
    return root


def test_nsynth_family_and_pitch_labels_and_subsets(nsynth_root: Path, tmp_path: Path) -> None:
    family = open_cache(config("nsynth", nsynth_root, tmp_path), progress=False)
    assert len(family) == 6 and len(family.class_names) == 11
    assert family.clip_samples == 4 * 16_000
    assert family.manifest["split_counts"] == {"test": 1, "train": 3, "validation": 2}
    assert family.class_names[family.labels[0]] in {"bass", "guitar", "string"}
    pitch = open_cache(config("nsynth", nsynth_root, tmp_path, label_field="pitch"), False)
    assert len(pitch.class_names) == 128 and pitch.path != family.path
    assert sorted(pitch.labels.tolist()) == [30, 40, 60, 61, 64, 72]


def test_unknown_label_field_lists_the_valid_ones(nsynth_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="valid: instrument_family, pitch"):
        open_cache(config("nsynth", nsynth_root, tmp_path, label_field="timbre"), False)
    with pytest.raises(DatasetError, match="label_field='pitch' is not valid for dataset 'esc50'"):
        open_cache(config("esc50", nsynth_root, tmp_path, label_field="pitch"), False)


# --- bad input --------------------------------------------------------------------------------
def test_bad_files_are_excluded_listed_warned_once_and_strict_fails(tmp_path: Path) -> None:
    root = tmp_path / "fsdd"
    for digit in range(3):
        write_tone(root / "recordings" / f"{digit}_george_{digit + 5}.wav", 300 + 100 * digit)
    good = (root / "recordings" / "0_george_5.wav").read_bytes()
    (root / "recordings" / "3_george_5.wav").write_bytes(b"")
    (root / "recordings" / "4_george_5.wav").write_bytes(good[: len(good) // 2])
    (root / "recordings" / "5_george_5.wav").write_bytes(b"RIFF....WAVEjunk" * 10)
    soundfile.write(root / "recordings" / "6_george_5.wav",
                    np.array([0.1, np.nan] * 50, np.float32), 8_000, subtype="FLOAT")  # fmt: skip
    (root / "recordings" / "7_george_5.wav").write_bytes(b"this is not audio at all" * 20)
    (root / "recordings" / "notes.wav").write_bytes(good)  # not digit_speaker_take
    (root / "recordings" / "8_alice_5.wav").write_bytes(good)  # not one of the six speakers
    cfg = config("fsdd", root, tmp_path / "cache")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = open_cache(cfg, progress=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, ExcludedFilesWarning)]
    assert len(messages) == 1 and "7 file(s) excluded" in messages[0]
    assert "BytesIO" not in messages[0] and "0x" not in messages[0]
    assert len(cache) == 3
    reasons = {entry["path"]: entry["reason"] for entry in cache.excluded}
    assert set(reasons) == {
        "recordings/3_george_5.wav", "recordings/4_george_5.wav", "recordings/5_george_5.wav",
        "recordings/6_george_5.wav", "recordings/7_george_5.wav", "recordings/notes.wav",
        "recordings/8_alice_5.wav",
    }  # fmt: skip
    assert "empty" in reasons["recordings/3_george_5.wav"]
    assert "truncated" in reasons["recordings/4_george_5.wav"]
    assert "NaN" in reasons["recordings/6_george_5.wav"]
    # A decode failure names the file (relative to the dataset root) and libsndfile's
    # message, not the in-memory buffer the decoder was handed.
    assert reasons["recordings/7_george_5.wav"] == (
        "recordings/7_george_5.wav: cannot decode: Format not recognised."
    )
    assert all(reason.startswith(f"{path}: ") for path, reason in reasons.items()
               if path not in ("recordings/notes.wav", "recordings/8_alice_5.wav"))  # fmt: skip
    assert "'alice' is not one of FSDD's six (george" in reasons["recordings/8_alice_5.wav"]
    # The warning shows each decode reason once, not "path (path: reason)".
    assert messages[0].count("7_george_5.wav") == 1

    with pytest.raises(DatasetError, match=r"7 file\(s\) excluded.*3_george_5\.wav.*data\.strict"):
        open_cache(cfg.model_copy(update={"strict": True}), progress=False)


def test_missing_listed_file_is_excluded(urbansound_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "us8k"
    (root / "metadata").mkdir(parents=True)
    meta = (urbansound_root / "metadata" / "UrbanSound8K.csv").read_text()
    (root / "metadata" / "UrbanSound8K.csv").write_text(meta)
    (root / "audio").symlink_to(urbansound_root / "audio")
    missing = meta.splitlines()[1].split(",")[0]
    (root / "audio" / "fold1" / missing).rename(tmp_path / "moved.wav")
    try:
        with pytest.warns(ExcludedFilesWarning, match="1 file"):
            cache = open_cache(config("urbansound8k", root, tmp_path / "cache"), False)
    finally:
        (tmp_path / "moved.wav").rename(urbansound_root / "audio" / "fold1" / missing)
    assert len(cache) == 19 and "cannot read" in cache.excluded[0]["reason"]
    assert cache.excluded[0]["reason"].startswith(f"audio/fold1/{missing}: ")


def test_missing_dataset_names_folder_env_var_and_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLARLAB_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as caught:
        open_cache(DataConfig(dataset="urbansound8k", cache_dir=tmp_path / "c"), False)
    message = str(caught.value)
    for needle in (str(tmp_path / "urbansound8k"), "CLARLAB_DATA", "data.root",
                   "data.download=true", "zenodo.org/record/1203745"):  # fmt: skip
        assert needle in message
    with pytest.raises(DatasetNotFoundError, match="data.root"):
        open_cache(config("esc50", tmp_path / "nowhere", tmp_path / "c"), False)


def test_unknown_dataset_lists_the_valid_names() -> None:
    assert sorted(DATASETS) == [
        "esc10", "esc50", "fsdd", "nsynth", "speech_commands", "speech_commands_10",
        "urbansound8k", "urbansound8k_sirennet",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="unknown dataset 'esc51'; valid: esc10, esc50, fsdd"):
        ExperimentConfig.from_dict({"data": {"dataset": "esc51"}})
    with pytest.raises(DatasetError, match="valid: esc10, esc50"):
        get_spec("esc51")


def test_split_scheme_mismatches_are_errors(speech_commands_root: Path, tmp_path: Path) -> None:
    cfg = config("speech_commands", speech_commands_root, tmp_path)
    cache = open_cache(cfg, progress=False)
    with pytest.raises(DatasetError, match="needs a fold-based dataset"):
        make_split(cache, cfg.model_copy(update={"split_scheme": "quaclrs", "fold": 1}))
    with pytest.raises(DatasetError, match="remove data.fold"):
        make_split(cache, cfg.model_copy(update={"fold": 2}))
