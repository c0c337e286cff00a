"""GPU checks: what the batched pipeline, bf16 and the cache's CUDA path buy on one GPU.

On one CUDA device, in one run (about 2-3 minutes at the default ``--seconds 5``):

- the cache's CUDA path, which the CPU tests skip: ``AudioCache.batch(rows, device)``
  sends the 16-bit rows over the bus and converts them on the GPU; it must give the same
  floats as ``batch(rows).to(device)``, and is timed against it;
- the batched augmentations + front end on the GPU against the authors' style of
  pipeline: per-clip librosa/numpy in ``DataLoader`` worker processes (one per CPU core)
  feeding the same GPU, for FD > TM > stft3 (CLAR's best 2D pair) and PS > TST > stft3
  (the two expensive ones); two views per clip in both, as training draws them. The
  per-clip references are those of ``bench/augment.py``;
- each batched signal augmentation alone on the GPU;
- the training step as a trial runs it (cache read on the device, two augmented views,
  front end, ResNet18, SimCLR loss, backward, LARS step) with AMP bf16 and in fp32, for
  the 2D ResNet18 on stft3 (channels-last, as trials train it, and contiguous) and the 1D
  ResNet18 on raw audio, width 64, batch 256 (CLAR's per-GPU batch: 1024 over 4 GPUs).

Audio: the real FSDD at 16 kHz from ``$CLARLAB_DATA/fsdd`` (cached under
``$CLARLAB_CACHE``), else synthetic clips written in FSDD's layout, said in the output.
Without CUDA it prints ``{"cuda": false, "skipped": ...}`` and exits 0, so ``make bench``
runs everywhere; ``--device cpu`` runs the same measurements on the CPU instead (slowly:
to check this script on a machine without a GPU, with a small ``--batch``).

The last line is one JSON object of headline figures. Exit 1 if the cache's CUDA path
disagrees with the CPU path or a training loss is not finite.

    python bench/gpu.py                  # ~2-3 minutes on one GPU
    python bench/gpu.py --seconds 2      # shorter timings
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SR = 16_000
BUDGET_S = 270.0  # the whole run stays under 5 minutes on one GPU: later steps are skipped
SIGNAL_CODES = ("PS", "TST", "FD", "TM", "TS", "WN", "MN")
PIPELINES = {"FD_TM_stft3": ["FD", "TM"], "PS_TST_stft3": ["PS", "TST"]}
MODELS = {"stft3": "resnet18", "raw1d": "resnet18_1d"}
warnings.filterwarnings("ignore", message="Empty filters detected")


def load_references() -> ModuleType:
    """``bench/augment.py``'s per-clip references (librosa, numpy), loaded by path."""
    path = Path(__file__).resolve().with_name("augment.py")
    spec = importlib.util.spec_from_file_location("clarlab_bench_augment", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed_for(function: Callable[[], object], seconds: float, sync: Callable[[], None]) -> float:
    """Median seconds per call over at least ``seconds`` (and 3 calls), after one warm-up."""
    function()
    sync()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - started < seconds:
        tick = time.perf_counter()
        function()
        sync()
        times.append(time.perf_counter() - tick)
    return statistics.median(times)


def write_synthetic_fsdd(root: Path, clips_per_pair: int = 10) -> None:
    """Speech-like clips (a voiced tone with a syllable envelope and breath noise) in FSDD's
    layout, 8 kHz 16-bit, so the synthetic case goes through the same cache build."""
    import soundfile

    from core.data.fsdd import SPEAKERS

    recordings = root / "recordings"
    recordings.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for digit in range(10):
        for speaker in SPEAKERS:
            for take in range(clips_per_pair):
                length = int(8000 * rng.uniform(0.35, 0.9))
                t = np.arange(length) / 8000
                pitch = rng.uniform(90, 240) * (1 + 0.1 * np.sin(2 * np.pi * 3 * t))
                phase = 2 * np.pi * np.cumsum(pitch) / 8000
                voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
                envelope = np.sin(np.pi * t / t[-1]) ** 2
                audio = 0.3 * envelope * voiced + 0.01 * rng.standard_normal(length)
                path = recordings / f"{digit}_{speaker}_{take}.wav"
                soundfile.write(path, audio.astype(np.float32), 8000, subtype="PCM_16")


def open_audio(scratch: Path, cache_dir: Path | None) -> tuple[Any, str]:
    """The FSDD cache at 16 kHz (built once per cache folder), or a synthetic one."""
    from core.config import DataConfig
    from core.data import open_cache

    root = Path(os.environ.get("CLARLAB_DATA", "../shared/datasets")) / "fsdd"
    if (root / "recordings").is_dir():
        source = f"FSDD at {root}"
    else:
        root, cache_dir = scratch / "fsdd", scratch / "cache"
        write_synthetic_fsdd(root)
        source = "synthetic speech-like clips in FSDD's layout (set CLARLAB_DATA for FSDD)"
    cfg = DataConfig(dataset="fsdd", root=root, sample_rate=SR, cache_dir=cache_dir)
    cache = open_cache(cfg, progress=False)
    return cache, f"{source}: {len(cache)} clips of {cache.clip_samples} samples"


class PerClipViews(torch.utils.data.Dataset):
    """The authors' style: each DataLoader worker decodes nothing (the cache has the
    audio), then augments one clip at a time with librosa/numpy and computes its stft3
    with librosa, twice per clip (two views)."""

    def __init__(self, cache: Any, codes: list[str], mel_basis: np.ndarray, length: int):
        self.cache, self.codes, self.mel_basis, self.length = cache, codes, mel_basis, length
        self.references: ModuleType | None = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item: int) -> torch.Tensor:
        if self.references is None:  # once per worker process
            self.references = load_references()
        refs = self.references
        rng = np.random.default_rng(item)
        clip = self.cache.to_float(self.cache.audio[item % len(self.cache)]).numpy()
        views = []
        for _ in range(2):
            audio = clip
            for code in self.codes:
                audio = refs.REFERENCES[code](audio, rng).astype(np.float32)
            views.append(refs.ref_stft3(audio, self.mel_basis))
        return torch.from_numpy(np.stack(views).astype(np.float32))


def _one_thread_per_worker(_: int) -> None:
    """Workers run one clip each, one thread each: as many workers as cores, no
    oversubscription."""
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass


def per_clip_loader_rate(
    cache: Any, codes: list[str], mel_basis: np.ndarray, args: argparse.Namespace
) -> float:
    """Clips/s the per-clip pipeline delivers to the device through a DataLoader.

    Each worker builds whole loader batches, so the count runs in whole rounds (one batch
    from every worker) after a first round of warm-up (imports, librosa's caches): the
    rate is then not a burst of workers that all started at once.
    """
    workers = max(1, args.loader_workers)
    dataset = PerClipViews(cache, codes, mel_basis, length=10**7)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.loader_batch,
        shuffle=False,
        num_workers=workers,
        pin_memory=args.device.type == "cuda",
        worker_init_fn=_one_thread_per_worker,
        prefetch_factor=2,
    )
    batches: Iterator[torch.Tensor] = iter(loader)
    for _ in range(workers):  # warm-up round
        next(batches).to(args.device)
    clips, received, started = 0, 0, time.perf_counter()
    while received % workers or time.perf_counter() - started < args.seconds:
        batch = next(batches).to(args.device, non_blocking=True)
        clips += batch.shape[0]
        received += 1
    sync(args.device)
    seconds = time.perf_counter() - started
    del batches  # stops the workers
    return clips / seconds


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_cache_path(cache: Any, args: argparse.Namespace, out: dict[str, Any]) -> bool:
    """``batch(rows, device)`` against ``batch(rows).to(device)``: equal, and how fast."""
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(cache), min(args.batch, len(cache)), replace=False))
    on_device = cache.batch(rows, device=args.device)
    via_cpu = cache.batch(rows).to(args.device)
    same = bool(torch.equal(on_device, via_cpu)) and on_device.dtype == torch.float32
    out["cache_device_path_matches_cpu"] = same
    direct = timed_for(
        lambda: cache.batch(rows, device=args.device), args.seconds / 2, lambda: sync(args.device)
    )
    copied = timed_for(
        lambda: cache.batch(rows).to(args.device), args.seconds / 2, lambda: sync(args.device)
    )
    out["cache_batch_ms_device_path"] = round(direct * 1e3, 3)
    out["cache_batch_ms_cpu_then_copy"] = round(copied * 1e3, 3)
    print(
        f"cache batch of {len(rows)}: {direct * 1e3:.2f} ms on the device path "
        f"({cache.manifest['dtype']} over the bus), {copied * 1e3:.2f} ms via CPU floats; "
        f"values {'identical' if same else 'DIFFER'}"
    )
    return same


def augmentation_rates(cache: Any, args: argparse.Namespace, out: dict[str, Any]) -> None:
    """Each batched signal augmentation alone on the device, clips/s."""
    from core.augment import SIGNAL_AUGMENTATIONS
    from core.config import AugmentConfig

    cfg = AugmentConfig()
    rows = np.arange(min(args.batch, len(cache)))
    waves = cache.batch(rows, device=args.device)
    generator = torch.Generator(device=args.device).manual_seed(0)
    print(f"\nbatched signal augmentations on {args.device.type}, batch {len(rows)}:")
    for code in SIGNAL_CODES:
        augment = SIGNAL_AUGMENTATIONS[code]
        with torch.inference_mode():
            seconds = timed_for(
                lambda a=augment: a(waves, generator, cfg, SR),
                args.seconds / 4,
                lambda: sync(args.device),
            )
        out[f"{code}_clips_per_s"] = round(len(rows) / seconds)
        print(f"  {code:<4} {len(rows) / seconds:12,.0f} clips/s")


def pipeline_rates(cache: Any, args: argparse.Namespace, out: dict[str, Any]) -> None:
    """Batched pipeline + front end on the device against per-clip loaders, two views."""
    from core.augment import build_signal_pipeline
    from core.config import AugmentConfig, FrontendConfig
    from core.features import build_frontend

    frontend = build_frontend(FrontendConfig(name="stft3", setting="paper"), SR)
    mel_basis = frontend.mel_basis.cpu().numpy()
    frontend = frontend.to(args.device)
    rng = np.random.default_rng(1)
    generator = torch.Generator(device=args.device).manual_seed(0)
    print(f"\naugment + stft3, two views per clip, batch {args.batch}:")
    for name, codes in PIPELINES.items():
        if over_budget(out, name):
            continue
        pipeline = build_signal_pipeline(AugmentConfig(pipeline=codes), SR).to(args.device)

        def batched(p: Any = pipeline) -> object:
            rows = np.sort(rng.choice(len(cache), min(args.batch, len(cache)), replace=False))
            waves = cache.batch(rows, device=args.device)
            with torch.no_grad():
                return [frontend(p(waves, generator)) for _ in range(2)]

        seconds = timed_for(batched, args.seconds, lambda: sync(args.device))
        ours = min(args.batch, len(cache)) / seconds
        theirs = per_clip_loader_rate(cache, codes, mel_basis, args)
        out[f"{name}_batched_clips_per_s"] = round(ours, 1)
        out[f"{name}_per_clip_loader_clips_per_s"] = round(theirs, 1)
        out[f"{name}_vs_per_clip_loader"] = round(ours / theirs, 2)
        print(
            f"  {name:<14} batched on {args.device.type}: {ours:10,.0f} clips/s   per-clip "
            f"librosa in {args.loader_workers} loader workers: {theirs:8,.1f} clips/s   "
            f"x{ours / theirs:,.1f}"
        )


def training_rate(
    cache: Any, frontend_name: str, amp: bool, channels_last: bool, args: argparse.Namespace
) -> dict[str, float]:
    """Clips/s of the SimCLR training step, as a trial runs it, at the paper's model, with
    the encoder and its inputs channels-last or contiguous (``train.memory_format``)."""
    from core.augment import build_view_augment
    from core.config import preset
    from core.features import build_frontend
    from core.methods import build_method
    from core.models import build_encoder
    from core.optim import build_optimizer

    cfg = preset(
        "paper",
        {
            "data": {"dataset": "fsdd", "download": False},
            "augment": {"pipeline": ["FD", "TM"]},
            "frontend": {"name": frontend_name},
            "model": {"encoder": MODELS[frontend_name], "width": args.width},
            "method": {"name": "simclr"},
            "train": {
                "batch_size": args.batch,
                "amp": "bf16" if amp else "off",
                "memory_format": "channels_last" if channels_last else "contiguous",
            },
        },
    )
    device = args.device
    torch.manual_seed(0)
    frontend = build_frontend(cfg.frontend, SR).to(device)
    augment = build_view_augment(cfg.augment, SR).to(device)
    encoder = build_encoder(cfg.model, in_channels=frontend.out_channels)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    method = build_method(cfg, encoder, num_classes=len(cache.class_names))
    method = method.to(device, memory_format=layout)
    method.train()
    optimizer = build_optimizer(cfg.optim, method)
    generator = torch.Generator(device=device).manual_seed(0)
    rng = np.random.default_rng(2)
    batch = min(args.batch, len(cache))
    losses: list[torch.Tensor] = []

    def step() -> None:
        rows = np.sort(rng.choice(len(cache), batch, replace=False))
        waves = cache.batch(rows, device=device)
        labels = torch.from_numpy(cache.labels[rows]).to(device)
        with torch.no_grad():
            views = [frontend(augment(waves, generator)) for _ in range(2)]
            views = [view.contiguous(memory_format=layout) for view in views]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            outputs = method(views[0], views[1], labels)
        loss = outputs["loss"].float()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.on_after_optimizer_step(0.5)
        losses.append(loss.detach())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):  # warm-up beyond timed_for's one call: kernels, allocator
        step()
    seconds = timed_for(step, args.seconds, lambda: sync(device))
    finite = bool(torch.isfinite(torch.stack(losses)).all())
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return {
        "clips_per_s": batch / seconds,
        "step_ms": seconds * 1e3,
        "finite": finite,
        "peak_gib": peak,
    }


def training_rates(cache: Any, args: argparse.Namespace, out: dict[str, Any]) -> bool:
    """bf16 and fp32 training steps for the 2D and 1D ResNet18, the 2D one channels-last
    (the default) and contiguous; False if a loss is not finite."""
    finite = True
    print(f"\ntraining step, SimCLR FD>TM, ResNet18 width {args.width}, batch {args.batch}:")
    for frontend_name in MODELS:
        rates = {}
        layouts = (True, False) if frontend_name != "raw1d" else (False,)
        for amp, channels_last in [(amp, cl) for amp in (True, False) for cl in layouts]:
            label = f"train_{frontend_name}_{'bf16' if amp else 'fp32'}"
            if frontend_name != "raw1d":
                label += "_channels_last" if channels_last else "_contiguous"
            if over_budget(out, label):
                continue
            row = training_rate(cache, frontend_name, amp, channels_last, args)
            rates[(amp, channels_last)] = row["clips_per_s"]
            finite = finite and row["finite"]
            out[f"{label}_clips_per_s"] = round(row["clips_per_s"], 1)
            if args.device.type == "cuda":
                out[f"{label}_peak_gib"] = round(row["peak_gib"], 2)
            layout_name = "channels-last" if channels_last else "contiguous"
            print(
                f"  {MODELS[frontend_name]:<12} {'bf16' if amp else 'fp32':<5} {layout_name:<13} "
                f"{row['clips_per_s']:9,.1f} clips/s  {row['step_ms']:8.1f} ms/step  "
                f"peak {row['peak_gib']:.2f} GiB  loss {'finite' if row['finite'] else 'NOT FINITE'}"
            )
        default = layouts[0]  # channels-last for 2D encoders, as trials train them
        if (True, default) in rates and (False, default) in rates:
            out[f"train_{frontend_name}_bf16_speedup"] = round(
                rates[(True, default)] / rates[(False, default)], 2
            )
        if (True, True) in rates and (True, False) in rates:
            out[f"train_{frontend_name}_channels_last_speedup_bf16"] = round(
                rates[(True, True)] / rates[(True, False)], 2
            )
        if (False, True) in rates and (False, False) in rates:
            out[f"train_{frontend_name}_channels_last_speedup_fp32"] = round(
                rates[(False, True)] / rates[(False, False)], 2
            )
    out["training_losses_finite"] = finite
    return finite


STARTED = time.monotonic()


def over_budget(out: dict[str, Any], name: str) -> bool:
    """Skip ``name`` (and say so in the JSON) once the run nears its 5-minute budget."""
    if time.monotonic() - STARTED < BUDGET_S:
        return False
    out.setdefault("skipped_for_time", []).append(name)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="timing per measurement")
    parser.add_argument("--batch", type=int, default=256, help="clips per batch (default 256)")
    parser.add_argument("--width", type=int, default=64, help="ResNet18 base width (default 64)")
    parser.add_argument(
        "--loader-workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="DataLoader processes of the per-clip reference (default: one per usable core)",
    )
    parser.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda",
        help="cuda (default; without CUDA the script reports the skip and exits 0) or cpu, "
        "to check this script where there is no GPU",
    )
    parser.add_argument(
        "--loader-batch",
        type=int,
        default=8,
        help="clips per batch of the per-clip reference's workers (default 8: short rounds, "
        "steadier rates; each clip is still processed alone)",
    )
    parser.add_argument("--cache-dir", type=Path, help="decoded cache (default $CLARLAB_CACHE)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            json.dumps(
                {
                    "cuda": False,
                    "skipped": "no CUDA device here (torch "
                    f"{torch.__version__}, torch.cuda.is_available() is False)",
                }
            )
        )
        return 0
    args.device = torch.device(args.device)
    out: dict[str, Any] = {"cuda": args.device.type == "cuda"}
    if args.device.type == "cuda":
        props = torch.cuda.get_device_properties(args.device)
        out["device"] = props.name
        out["capability"] = f"{props.major}.{props.minor}"
        # Below compute capability 8 (V100), bf16 runs emulated, without tensor cores.
        out["bf16_native"] = props.major >= 8
    else:
        out["device"] = f"cpu ({len(os.sched_getaffinity(0))} usable cores)"
    with tempfile.TemporaryDirectory(prefix="clarlab-bench-gpu-") as scratch:
        cache, source = open_audio(Path(scratch), args.cache_dir)
        out["audio"] = source
        out["loader_workers"] = args.loader_workers
        print(f"{out['device']}; {source}; torch {torch.__version__}")
        same = check_cache_path(cache, args, out)
        augmentation_rates(cache, args, out)
        pipeline_rates(cache, args, out)
        finite = training_rates(cache, args, out)
    out["seconds"] = round(time.monotonic() - STARTED, 1)
    print(json.dumps(out))
    return 0 if same and finite else 1


if __name__ == "__main__":
    sys.exit(main())
