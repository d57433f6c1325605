"""Train the small MobileNet-style Fashion-MNIST model whose weights ship in
qcompiler/data/fashion_mnist_mobilenet.pt (deterministic: seed 0, CPU).

    .venv/bin/python bench/train_fashion_mnist.py [--epochs 10]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from qcompiler.models import FASHION_MNIST_WEIGHTS, FashionMobileNet, fashion_mnist


def evaluate(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return float(sum((model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum() for i in range(0, len(x), 1000))) / len(x)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y = fashion_mnist("train")
    xt, yt = fashion_mnist("test")
    model = FashionMobileNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = args.epochs * (len(x) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    for epoch in range(args.epochs):
        model.train()
        start = time.time()
        perm = torch.randperm(len(x))
        for i in range(0, len(x) - 127, 128):
            idx = perm[i:i + 128]
            xb = x[idx]
            flip = torch.rand(len(idx)) < 0.5  # horizontal flips and ±2-pixel shifts
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
            xb = torch.roll(F.pad(xb, (2, 2, 2, 2)), shifts=tuple(torch.randint(-2, 3, (2,)).tolist()), dims=(2, 3))[:, :, 2:30, 2:30]
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}: loss {float(loss.detach()):.3f}, test accuracy {evaluate(model, xt, yt):.4f} ({time.time() - start:.0f} s)", flush=True)
    torch.save(model.state_dict(), FASHION_MNIST_WEIGHTS)
    print(f"saved {FASHION_MNIST_WEIGHTS}: test accuracy {evaluate(model, xt, yt):.4f}")


if __name__ == "__main__":
    main()
