"""Augmentation and front-end throughput against per-clip and library references.

For a batch of B clips x T samples (default 256 x 16,000, real FSDD speech at 16 kHz
when ``$CLARLAB_DATA`` holds it), prints clips/s of each batched augmentation in
``core.augment`` next to

- a per-clip librosa / numpy loop doing the same thing, the way the authors' code ran it
  (librosa's ``pitch_shift`` / ``time_stretch``, numpy fades, masks, rolls and noise), and
- torch-audiomentations where it has the transform (pitch shift, shift, coloured noise),

and the paper's best 2D pipeline FD -> TM -> stft3 (per-clip reference: numpy FD and TM,
then librosa's STFT, mel and phase). Every reference is measured in the same run, so the
ratios hold across machines; slow references run on a subset of clips and are scaled.
Where CUDA is available the batched path is also timed on the GPU.

The last output line is one JSON object of headline figures.

    python bench/augment.py                 # default, ~2 minutes on 2 cores
    python bench/augment.py --batch 64      # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import librosa
import numpy as np
import torch

from core.augment import SIGNAL_AUGMENTATIONS, build_signal_pipeline
from core.config import AugmentConfig, FrontendConfig
from core.features import build_frontend
from core.memory import keep_freed_pages

SR = 16_000
warnings.filterwarnings("ignore", message="Empty filters detected")


def load_batch(batch: int, length: int) -> tuple[np.ndarray, str]:
    """Real FSDD speech at 16 kHz if available, else speech-shaped noise (said in the table)."""
    root = Path(os.environ.get("CLARLAB_DATA", "")) / "fsdd" / "recordings"
    files = sorted(root.glob("*.wav")) if root.is_dir() else []
    if files:
        import soundfile as sf
        import soxr

        clips = []
        for path in files[:: max(1, len(files) // batch)][:batch]:
            audio, rate = sf.read(path, dtype="float32")
            clips.append(librosa.util.fix_length(soxr.resample(audio, rate, SR), size=length))
        while len(clips) < batch:
            clips.append(clips[len(clips) % len(files)])
        return np.stack(clips).astype(np.float32), f"FSDD speech, {len(files)} files available"
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((batch, length)).astype(np.float32)
    return 0.1 * np.cumsum(noise, axis=1) / np.sqrt(length), "synthetic (set CLARLAB_DATA)"


def timed(function: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    """Best of ``repeats`` runs after one warm-up run, in seconds.

    The best run is the least disturbed by other processes on a shared machine; the per-clip
    references run long enough (seconds) to average such disturbance out.
    """
    function()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


# --- per-clip references, the way a per-clip data loader would run them ---------------
def ref_pitch_shift(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    shifted = librosa.effects.pitch_shift(clip, sr=SR, n_steps=int(rng.integers(-15, 16)))
    return librosa.util.fix_length(shifted, size=len(clip))


def ref_time_stretch(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    stretched = librosa.effects.time_stretch(clip, rate=float(rng.uniform(0.5, 1.5)))
    return librosa.util.fix_length(stretched, size=len(clip))


def ref_fade(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    half = len(clip) // 2
    fade_in, fade_out = int(rng.integers(0, half + 1)), int(rng.integers(0, half + 1))
    shape = int(rng.integers(0, 3))
    curves = {
        0: lambda r: r,
        1: lambda r: np.log10(0.1 + r) + 1,
        2: lambda r: np.power(2.0, r - 1) * r,
    }
    gain = np.ones(len(clip), dtype=np.float32)
    gain[:fade_in] = np.clip(curves[shape](np.linspace(0, 1, fade_in)), 0, 1)
    if fade_out:
        gain[len(clip) - fade_out :] *= np.clip(curves[shape](np.linspace(1, 0, fade_out)), 0, 1)
    return clip * gain


def ref_time_mask(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    span = int(rng.integers(0, len(clip) // 8 + 1))
    start = int(rng.integers(0, len(clip) - span + 1))
    out = clip.copy()
    out[start : start + span] = rng.standard_normal(span) * np.sqrt(np.mean(clip**2))
    return out


def ref_time_shift(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    half = len(clip) // 2
    return np.roll(clip, int(rng.integers(-half, half + 1)))


def _at_snr(clip: np.ndarray, noise: np.ndarray, snr: float) -> np.ndarray:
    gain = np.sqrt(np.mean(clip**2) / (np.mean(noise**2) * 10 ** (snr / 10)))
    return clip + gain * noise


def ref_white_noise(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _at_snr(clip, rng.standard_normal(len(clip)), rng.uniform(0, 20))


def ref_mixed_noise(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    exponent = int(rng.integers(0, 3))
    spectrum = np.fft.rfft(rng.standard_normal(len(clip)))
    freqs = np.fft.rfftfreq(len(clip))
    freqs[0] = freqs[1]
    shaped = spectrum * freqs ** (-exponent / 2)
    shaped[0] = 0
    return _at_snr(clip, np.fft.irfft(shaped, n=len(clip)), rng.uniform(0, 20))


def ref_stft3(clip: np.ndarray, mel_basis: np.ndarray) -> np.ndarray:
    spec = librosa.stft(clip, n_fft=256, hop_length=128, window="hann", pad_mode="reflect")
    power = np.abs(spec) ** 2
    stft_db = 10 * np.log10(np.maximum(power[:128], 1e-10))
    mel_db = 10 * np.log10(np.maximum(mel_basis @ power, 1e-10))
    return np.stack([stft_db, mel_db, np.angle(spec[:128])])


REFERENCES: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "PS": ref_pitch_shift,
    "TST": ref_time_stretch,
    "FD": ref_fade,
    "TM": ref_time_mask,
    "TS": ref_time_shift,
    "WN": ref_white_noise,
    "MN": ref_mixed_noise,
}


def per_clip_seconds(code: str, clips: np.ndarray, subset: int) -> float:
    """Seconds for the whole batch, measured on ``subset`` clips and scaled."""
    rng = np.random.default_rng(0)
    reference = REFERENCES[code]
    reference(clips[0], rng)  # warm-up (librosa's first call compiles / caches)
    start = time.perf_counter()
    for clip in clips[:subset]:
        reference(clip, rng)
    return (time.perf_counter() - start) * len(clips) / subset


def audiomentations_seconds(code: str, batch: torch.Tensor, subset: int) -> float | None:
    """torch-audiomentations' batched transform for the same augmentation, if it has one."""
    try:
        import torch_audiomentations as tam
    except ImportError:
        return None
    transforms = {
        "PS": lambda: tam.PitchShift(-15, 15, p=1.0, sample_rate=SR, output_type="dict"),
        "TS": lambda: tam.Shift(-0.5, 0.5, rollover=True, p=1.0, output_type="dict"),
        "MN": lambda: tam.AddColoredNoise(0, 20, -2, 0, p=1.0, sample_rate=SR, output_type="dict"),
    }
    if code not in transforms:
        return None
    transform = transforms[code]()
    part = batch[:subset, None]
    seconds = timed(lambda: transform(part), 1, lambda: None)
    return seconds * batch.shape[0] / subset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--length", type=int, default=16_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ref-subset", type=int, default=64, help="clips per slow reference")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default); 1 is steadier on a busy shared machine",
    )
    parser.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave glibc's malloc as it is instead of tuning it as training does",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # Training workers keep freed pages mapped (core.memory); measure what they run.
    allocator = (
        "glibc default" if args.default_allocator or not keep_freed_pages() else "kept pages"
    )

    clips, source = load_batch(args.batch, args.length)
    batch = torch.from_numpy(clips)
    cfg = AugmentConfig()
    threads = torch.get_num_threads()
    print(
        f"batch {args.batch} x {args.length} samples ({source}); torch threads {threads}; "
        f"allocator: {allocator}"
    )
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])

    def sync_for(device: torch.device) -> Callable[[], None]:
        return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    rows = []
    headline: dict[str, float] = {}
    for code in ("PS", "TST", "FD", "TM", "TS", "WN", "MN"):
        augment = SIGNAL_AUGMENTATIONS[code]
        ours = {}
        for device in devices:
            on_device = batch.to(device)
            generator = torch.Generator(device=device).manual_seed(0)
            with torch.inference_mode():
                ours[device.type] = timed(
                    lambda a=augment, x=on_device, g=generator: a(x, g, cfg, SR),
                    args.repeats,
                    sync_for(device),
                )
        slow = code in ("PS", "TST")
        subset = min(args.ref_subset if slow else args.batch, args.batch)
        reference = per_clip_seconds(code, clips, subset)
        library = audiomentations_seconds(code, batch, min(32, args.batch) if slow else args.batch)
        rows.append((code, ours, reference, library))
        headline[f"{code}_vs_librosa" if slow else f"{code}_vs_numpy"] = round(
            reference / ours["cpu"], 2
        )
        if library is not None:
            headline[f"{code}_vs_torch_audiomentations"] = round(library / ours["cpu"], 2)
        if "cuda" in ours:
            headline[f"{code}_cuda_clips_per_s"] = round(args.batch / ours["cuda"])

    # The paper's best 2D pipeline: FD -> TM -> stft3, one view.
    pipeline = build_signal_pipeline(AugmentConfig(pipeline=["FD", "TM"]), SR)
    frontend = build_frontend(FrontendConfig(name="stft3", setting="paper"), SR)
    pipe_ours = {}
    for device in devices:
        on_device, module = batch.to(device), frontend.to(device)
        generator = torch.Generator(device=device).manual_seed(0)
        with torch.inference_mode():
            pipe_ours[device.type] = timed(
                lambda x=on_device, m=module, g=generator: m(pipeline(x, g)),
                4 * args.repeats,  # ~0.1 s a run: more runs, steadier best
                sync_for(device),
            )
    mel_basis = frontend.mel_basis.cpu().numpy()
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for clip in clips:
        ref_stft3(ref_time_mask(ref_fade(clip, rng), rng), mel_basis)
    pipe_reference = time.perf_counter() - start
    rows.append(("FD>TM>stft3", pipe_ours, pipe_reference, None))
    headline["FD_TM_stft3_clips_per_s"] = round(args.batch / pipe_ours["cpu"])
    headline["FD_TM_stft3_vs_per_clip"] = round(pipe_reference / pipe_ours["cpu"], 2)
    if "cuda" in pipe_ours:
        headline["FD_TM_stft3_cuda_clips_per_s"] = round(args.batch / pipe_ours["cuda"])

    header = f"{'augmentation':<13}{'batched cpu':>13}{'per-clip ref':>14}{'x ref':>8}"
    header += f"{'t-audiomentations':>19}{'x t-a':>8}"
    header += f"{'batched cuda':>14}" if len(devices) > 1 else ""
    print("\nclips/s (higher is better); 'x' = how many times faster the batched path is")
    print(header)
    print("-" * len(header))
    for name, ours, reference, library in rows:
        line = f"{name:<13}{args.batch / ours['cpu']:>13,.0f}{args.batch / reference:>14,.0f}"
        line += f"{reference / ours['cpu']:>8.1f}"
        if library is None:
            line += f"{'-':>19}{'-':>8}"
        else:
            line += f"{args.batch / library:>19,.0f}{library / ours['cpu']:>8.1f}"
        if "cuda" in ours:
            line += f"{args.batch / ours['cuda']:>14,.0f}"
        print(line)
    print(
        "\nper-clip refs: librosa pitch_shift/time_stretch (PS/TST on "
        f"{min(args.ref_subset, args.batch)} clips, scaled), numpy for the rest; FD>TM>stft3 "
        "ref: numpy FD, TM + librosa stft, mel, phase per clip"
    )
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
