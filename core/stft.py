"""The short-time Fourier transform behind the 2D front ends of :mod:`core.features`.

Every 2D front end runs it on every view of every batch, so it carries its own
performance work (one stacked convolution weight, an FFT path on CPU, edge-only reflect
padding) and its own tests of equality with the fully padded reference. It lives apart
from the front ends, which only combine its output into log-power, mel and phase
channels, so that each module stays one job: the transform here, the features there.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from nnAudio.features import STFT as NnAudioSTFT
from torch import Tensor


class STFT(torch.nn.Module):
    """nnAudio's STFT (windowed sine and cosine kernels), by convolution or by FFT.

    nnAudio builds the kernels (periodic Hann window, linear or log-spaced bins, matching
    ``torch.stft`` to ~2e-5) and runs two convolutions; here the cosine and sine kernels
    are stacked into ONE weight, which halves the passes over the input. A convolutional
    STFT is what CLAR ran on GPU and gives any bin spacing. For the full set of linear bins
    the same numbers come from a real FFT of the windowed frames, several times cheaper on
    CPU: ``backend="auto"`` uses the FFT on CPU and the convolution elsewhere; log-spaced
    bins always use the convolution.
    """

    def __init__(
        self, params: dict[str, Any], sample_rate: int, bins: int, scale: str, backend: str
    ):
        super().__init__()
        n_fft = params["n_fft"]
        layer = NnAudioSTFT(
            n_fft=n_fft,
            win_length=params["win_length"],
            freq_bins=bins,
            hop_length=params["hop_length"],
            window="hann",
            freq_scale="no" if scale == "full" else scale,
            center=True,
            pad_mode="reflect",
            fmin=params["fmin"],
            fmax=params["fmax"],
            sr=sample_rate,
            output_format="Complex",
            verbose=False,
        )
        self.bins = layer.wcos.shape[0]
        self.backend = backend if scale == "full" else "conv"
        self.register_buffer("kernel", torch.cat([layer.wcos, layer.wsin], dim=0).float())
        self.register_buffer("window", layer.window_mask.flatten().float())
        self.register_buffer("bin_freqs", torch.tensor(layer.bins2freq, dtype=torch.float32))
        self.n_fft = n_fft
        self.hop = params["hop_length"]
        self.pad = n_fft // 2

    def _check_length(self, x: Tensor) -> None:
        if x.shape[-1] <= self.pad:
            raise ValueError(
                f"clips of {x.shape[-1]} samples are shorter than the reflect padding "
                f"{self.pad} (n_fft/2); lower frontend.n_fft or lengthen data.clip_seconds"
            )

    def windowed_frames(self, x: Tensor) -> Tensor:
        """Windowed frames ``(B, frames, n_fft)`` of the reflect-padded, centred clip.

        Frame k reads ``x[k*hop - pad : k*hop - pad + n_fft]``. Only the few frames at each
        end reach into the padding, so those are built from short reflected pieces and the
        rest straight from ``x``: padding the whole clip first would copy every sample once
        more for nothing (as much time as the FFT itself on CPU).
        """
        self._check_length(x)
        batch, length = x.shape
        n_fft, hop, pad = self.n_fft, self.hop, self.pad
        count = 1 + (length + 2 * pad - n_fft) // hop
        frames = x.new_empty(batch, count, n_fft)
        first = -(-pad // hop)  # the first frame that lies inside x
        last = (length + pad - n_fft) // hop  # the last one
        if first > last:  # a clip shorter than a frame or two: every frame touches the padding
            padded = F.pad(x[:, None], (pad, pad), mode="reflect")[:, 0]
            return torch.mul(padded.unfold(-1, n_fft, hop), self.window, out=frames)
        inner = x[:, first * hop - pad : last * hop - pad + n_fft]
        torch.mul(inner.unfold(-1, n_fft, hop), self.window, out=frames[:, first : last + 1])
        if first > 0:  # reflect padding: padded[i] = x[pad - i] for i < pad
            head = torch.cat(
                [x[:, 1 : pad + 1].flip(-1), x[:, : (first - 1) * hop + n_fft - pad]], 1
            )
            torch.mul(head.unfold(-1, n_fft, hop), self.window, out=frames[:, :first])
        if last + 1 < count:  # and padded[pad + length + j] = x[length - 2 - j]
            tail = torch.cat(
                [x[:, (last + 1) * hop - pad :], x[:, length - 1 - pad : length - 1].flip(-1)], 1
            )
            tail_frames = tail.unfold(-1, n_fft, hop)[:, : count - last - 1]
            torch.mul(tail_frames, self.window, out=frames[:, last + 1 :])
        return frames

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Real and imaginary parts ``(B, bins, frames)`` of the centred STFT."""
        if self.backend == "fft" or (self.backend == "auto" and x.device.type == "cpu"):
            spectrum = torch.fft.rfft(self.windowed_frames(x), dim=-1)  # (B, frames, bins)
            # One copy to contiguous planar (2, B, bins, frames): the element-wise maths
            # after this (power, log, atan2) is 10x slower on interleaved strided views.
            planes = torch.view_as_real(spectrum).permute(3, 0, 2, 1).contiguous()
            return planes[0], planes[1]
        self._check_length(x)
        padded = F.pad(x[:, None], (self.pad, self.pad), mode="reflect")
        out = F.conv1d(padded, self.kernel, stride=self.hop)
        return out[:, : self.bins], -out[:, self.bins :]
