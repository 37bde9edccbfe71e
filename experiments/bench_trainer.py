"""Benchmark: prunenas' trainer vs the minimal PyTorch loop on the same work.

Same model (the vgg11-fashionmnist base), batch size, thread count, in-memory data and augmentation; the
minimal loop does only forward, loss, backward and a plain SGD step. Runs alternate; the printed ratio is
the median of (trainer images/s) / (loop images/s) over the rounds. Target: >= 0.95 on CPU.

    .venv/bin/python experiments/bench_trainer.py [--rounds 3] [--images 12800] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from prunenas.data import load_data
from prunenas.spaces import load_space
from prunenas.train import train
from prunenas.train_config import TrainConfig


def minimal_loop(model: nn.Module, data, batch_size: int, device: torch.device) -> float:
    """Images per second of the bare loop over one epoch of ``data.train``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss()
    model.train()
    generator = torch.Generator().manual_seed(0)
    images, start = 0, time.perf_counter()
    for x, y in data.train.batches(batch_size, shuffle=True, augment=True, generator=generator, drop_last=True):
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        images += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=12800, help="training images per measured epoch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--space", default="vgg11-fashionmnist")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    space = load_space(args.space)
    device = torch.device(args.device)
    data = load_data(space.dataset, space.input_shape, space.num_classes, val_size=256, subset=args.images).to(device)
    config = TrainConfig.from_recipe("fast", epochs=1, device=args.device, threads=args.threads, amp="off",
                                     channels_last=False)
    ratios = []
    for r in range(args.rounds):
        torch.manual_seed(r)
        loop = minimal_loop(space.base.build().to(device), data, config.batch_size, device)
        ours = train(space.base, data, config, evaluate_test=False).images_per_s
        ratios.append(ours / loop)
        print(f"round {r + 1}: trainer {ours:.0f} img/s, minimal loop {loop:.0f} img/s, ratio {ours / loop:.3f}")
    print(f"ratio = trainer images/s / loop images/s = {statistics.median(ratios):.3f} "
          f"(median of {args.rounds}; {args.space}, batch {config.batch_size}, {args.threads} threads, {device})")


if __name__ == "__main__":
    main()
