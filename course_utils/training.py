"""A small training loop with a progress bar (introduced in notebook 00, used by every chapter).

``train_loop`` runs ``steps`` optimizer steps over a (cycled) iterable of batches, with
``tqdm.auto`` progress in JupyterLab; under tests, CI and the HTML export (``COURSE_HEADLESS=1``)
the bar is off, so no timing ends up in a stored notebook output.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from tqdm.auto import tqdm

from .config import is_headless


def progress(iterable=None, **kwargs):
    """``tqdm.auto.tqdm``, disabled when headless (tests, CI, HTML export)."""
    kwargs.setdefault("disable", is_headless())
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)


def cycle(batches: Iterable):
    """Loop over a DataLoader (or any re-iterable) forever, one epoch after another."""
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise ValueError("the batch iterable is empty")


@dataclass
class History:
    """Losses per step (and any extra metrics logged by the loss function)."""

    loss: list[float] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)

    def mean(self, last: int = 50) -> float:
        tail = self.loss[-last:]
        return sum(tail) / max(len(tail), 1)


def cosine_schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: int = 0):
    """Linear warm-up then cosine decay to zero, as a ``LambdaLR``."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress_ = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress_, 1.0)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, f)


def train_loop(model: torch.nn.Module, batches: Iterable, loss_fn: Callable, optimizer: torch.optim.Optimizer,
               steps: int, *, scheduler=None, grad_clip: float | None = 1.0, desc: str = "train",
               callback: Callable[[int, float], None] | None = None) -> History:
    """Run ``steps`` optimizer steps; ``loss_fn(model, batch)`` returns a loss or ``(loss, metrics)``.

    Returns a ``History``; the model is left in eval mode.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    hist = History()
    model.train()
    it = cycle(batches)
    bar = progress(range(steps), desc=desc)
    for step in bar:
        out = loss_fn(model, next(it))
        loss, metrics = (out if isinstance(out, tuple) else (out, {}))
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss became {loss.item()} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        hist.loss.append(loss.item())
        for k, v in metrics.items():
            hist.metrics.setdefault(k, []).append(float(v))
        if callback is not None:
            callback(step, hist.loss[-1])
        if step % 10 == 0:
            bar.set_postfix(loss=f"{hist.mean(10):.4f}")
    model.eval()
    return hist
