"""Encoder throughput and loss cost, each against a reference measured in the same run.

- Forward+backward samples/s of ``resnet18_1d`` on 1 s raw audio (16 kHz) and ``resnet18``
  on CLAR's 3-channel features (128 x 126 at 16 ms / 8 ms), widths 16/32/64. Reference:
  torchvision's resnet18 (width 64 only; it has no width multiplier) on the same input.
- Loss forward+backward time at batch 1024, ours against lightly's where they coincide.

Run: ``python bench/models.py`` (``--batch``, ``--repeats``, ``--widths``, ``--device``).
The last line printed is one JSON object of the headline figures.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from core import losses
from core.config import ModelConfig
from core.models import build_encoder, count_parameters

SAMPLE_RATE = 16_000
STFT3_SHAPE = (3, 128, 126)  # CLAR: 128 bins, 1 s at 8 ms stride


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(function: Callable[[], None], repeats: int, device: torch.device) -> float:
    """Median seconds of ``function`` after one warm-up call."""
    function()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def time_pair(
    first: Callable[[], None], second: Callable[[], None], repeats: int, device: torch.device
) -> tuple[float, float]:
    """Median seconds of two functions timed alternately, so that load from other
    processes on a shared machine hits both alike."""
    first(), second()
    _sync(device)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for function, bucket in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            function()
            _sync(device)
            bucket.append(time.perf_counter() - start)
    return tuple(sorted(t)[len(t) // 2] for t in times)  # type: ignore[return-value]


def train_step(model: nn.Module, batch: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(batch).float().pow(2).mean().backward()

    return step


def bench_encoders(args, device: torch.device) -> tuple[list[tuple], dict[str, float]]:
    rows, headline = [], {}
    for front_end, encoder, shape in (
        ("raw1d", "resnet18_1d", (1, SAMPLE_RATE)),
        ("stft3", "resnet18", STFT3_SHAPE),
    ):
        batch = torch.randn(args.batch, *shape, device=device)
        for width in args.widths:
            model = build_encoder(ModelConfig(encoder=encoder, width=width), shape[0]).to(device)
            seconds = time_call(train_step(model, batch), args.repeats, device)
            rate = args.batch / seconds
            key = f"{encoder}_w{width}_{front_end}"
            headline[key] = round(rate, 2)
            rows.append((key, count_parameters(model), rate, ""))
    # Reference: torchvision resnet18 (width 64) on the stft3 input.
    batch = torch.randn(args.batch, *STFT3_SHAPE, device=device)
    reference = torchvision.models.resnet18(weights=None).to(device)
    reference.fc = nn.Identity()
    ref_rate = args.batch / time_call(train_step(reference, batch), args.repeats, device)
    rows.append(("torchvision_resnet18_stft3", count_parameters(reference), ref_rate, "ref"))
    if "resnet18_w64_stft3" in headline:
        ratio = headline["resnet18_w64_stft3"] / ref_rate
        headline["resnet18_w64_vs_torchvision"] = round(ratio, 3)
        rows[[r[0] for r in rows].index("resnet18_w64_stft3")] = (
            *rows[[r[0] for r in rows].index("resnet18_w64_stft3")][:3],
            f"{ratio:.2f}x torchvision",
        )
    for width in args.widths:
        one_d = f"resnet18_1d_w{width}_raw1d"
        two_d = f"resnet18_w{width}_stft3"
        headline[f"w{width}_1d_over_2d"] = round(headline[one_d] / headline[two_d], 3)
    return rows, headline


def bench_losses(args, device: torch.device) -> tuple[list[tuple], dict[str, float]]:
    from lightly.loss import BarlowTwinsLoss, DINOLoss, NTXentLoss, SwaVLoss

    batch, dim = args.loss_batch, 128
    generator = torch.Generator(device="cpu").manual_seed(0)

    def leaf(*shape):
        return torch.randn(*shape, generator=generator).to(device).requires_grad_(True)

    z1, z2 = leaf(batch, dim), leaf(batch, dim)
    queue = nn.functional.normalize(torch.randn(4096, dim, device=device), dim=1)
    scores1, scores2 = leaf(batch, 100), leaf(batch, 100)
    dino1, dino2 = leaf(batch, 1024), leaf(batch, 1024)
    center = torch.zeros(1, 1024, device=device)
    lightly_moco = NTXentLoss(temperature=0.2, memory_bank_size=(4096, dim)).to(device)
    lightly_dino = DINOLoss(output_dim=1024, warmup_teacher_temp_epochs=1).to(device)
    cases = {
        "nt_xent": (
            lambda: losses.nt_xent(z1, z2, 0.5),
            lambda: NTXentLoss(temperature=0.5)(z1, z2),
        ),
        "moco": (
            lambda: losses.moco_loss(z1, z2.detach(), queue, 0.2),
            lambda: lightly_moco(z1, z2.detach()),
        ),
        "barlow_twins": (
            lambda: losses.barlow_twins_loss(z1, z2, 5e-3),
            lambda: BarlowTwinsLoss(lambda_param=5e-3)(z1, z2),
        ),
        "dino": (
            lambda: losses.dino_loss([dino1, dino2], [dino2.detach(), dino1.detach()], center),
            lambda: lightly_dino([dino2.detach(), dino1.detach()], [dino1, dino2]),
        ),
        "swav": (
            lambda: losses.swav_loss(scores1, scores2, 0.1),
            lambda: SwaVLoss(temperature=0.1)([scores1, scores2], []),
        ),
        "byol": (lambda: losses.byol_loss(z1, z2), None),
    }
    rows, headline = [], {}
    for name, (ours, theirs) in cases.items():
        run_ours = lambda f=ours: f().sum().backward()  # noqa: E731
        note = ""
        if theirs is None:
            ours_s = time_call(run_ours, 2 * args.repeats + 1, device)
        else:
            run_theirs = lambda f=theirs: f().sum().backward()  # noqa: E731
            ours_s, theirs_s = time_pair(run_ours, run_theirs, 2 * args.repeats + 1, device)
            headline[f"{name}_vs_lightly"] = round(theirs_s / ours_s, 3)
            note = f"lightly {theirs_s * 1e3:.2f} ms -> ours {theirs_s / ours_s:.2f}x as fast"
        headline[f"{name}_b{batch}_ms"] = round(ours_s * 1e3, 3)
        rows.append((name, ours_s * 1e3, note))
    return rows, headline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="encoder batch per step")
    parser.add_argument("--loss-batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {label}, torch threads: {torch.get_num_threads()}, batch {args.batch}")

    encoder_rows, headline = bench_encoders(args, device)
    print(f"\n{'encoder (fwd+bwd)':<30}{'params':>12}{'samples/s':>12}  note")
    for name, params, rate, note in encoder_rows:
        print(f"{name:<30}{params:>12,}{rate:>12.1f}  {note}")
    for width in args.widths:
        print(f"  width {width}: 1D/2D throughput ratio {headline[f'w{width}_1d_over_2d']:.2f}")

    loss_rows, loss_headline = bench_losses(args, device)
    headline.update(loss_headline)
    print(f"\n{'loss (fwd+bwd), batch ' + str(args.loss_batch):<30}{'ms':>10}  reference")
    for name, ms, note in loss_rows:
        print(f"{name:<30}{ms:>10.2f}  {note}")
    headline["device"] = label
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
