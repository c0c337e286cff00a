"""Where ImageNet weights for the torchvision backbones are found on this machine.

Nothing is ever downloaded: a trial reads torchvision's checkpoint file from a folder the
user names (``model.weights_dir``) or from torchvision's own cache (``$TORCH_HOME/hub/
checkpoints``, where ``torchvision.models.<name>(weights=...)`` leaves it on a machine
that has network). The file names are torchvision's (0.24) for the ``IMAGENET1K_V1``
weights; ``tests/test_imagenet.py`` checks them against torchvision so they cannot drift.

Torch-free, so the dry run can say which file is missing before anything starts.
"""

from __future__ import annotations

import os
from pathlib import Path

IMAGENET_CHECKPOINTS = {
    "alexnet": "alexnet-owt-7be5be79.pth",
    "vgg16": "vgg16-397923af.pth",
    "resnet18": "resnet18-f37072fd.pth",
    "mobilenet_v2": "mobilenet_v2-b0353104.pth",
    "inception_v3": "inception_v3_google-0cc3c7bd.pth",
    "efficientnet_b0": "efficientnet_b0_rwightman-7f5810bc.pth",
    "convnext_tiny": "convnext_tiny-983f1562.pth",
}


def torch_hub_checkpoints() -> Path:
    """torchvision's download cache, as ``torch.hub.get_dir()`` computes it."""
    home = os.environ.get("TORCH_HOME")
    if home:
        return Path(home).expanduser() / "hub" / "checkpoints"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "torch" / "hub" / "checkpoints"


def imagenet_checkpoint(encoder: str, weights_dir: Path | None = None) -> Path:
    """The local file with ImageNet weights for ``encoder``; the error names every place
    looked at and how to fill one."""
    if encoder not in IMAGENET_CHECKPOINTS:
        raise ValueError(
            f"model.weights='imagenet': no ImageNet weights for encoder {encoder!r}; they "
            f"exist for {', '.join(IMAGENET_CHECKPOINTS)}"
        )
    name = IMAGENET_CHECKPOINTS[encoder]
    places = [Path(weights_dir).expanduser()] if weights_dir is not None else []
    places.append(torch_hub_checkpoints())
    for folder in places:
        if (folder / name).is_file():
            return folder / name
    expected = " or ".join(str(folder / name) for folder in places)
    raise FileNotFoundError(
        f"ImageNet weights for {encoder!r} not found: expected {expected}. Nothing is "
        f"downloaded during a sweep; on a machine with network run `python -c \"import "
        f"torchvision; torchvision.models.{encoder}(weights='IMAGENET1K_V1')\"` and copy "
        f"{name} there (or pass --weights-dir)"
    )
