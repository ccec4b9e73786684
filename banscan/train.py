"""Fast, seeded training recipe for CPU and GPU alike.

The dataset is one uint8 tensor; augmentation (random crop with padding, horizontal flip) runs batched as
tensor ops; channels-last and bfloat16 autocast are used where they help; the schedule is one-cycle.
A ``batch_hook`` lets attacks poison each augmented batch (and add loss terms) without a custom loop.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._utils import BanscanError, eval_mode, progress, resolve_device, write_atomic
from .data import ImageData
from .models import SplitModel

__all__ = ["TrainConfig", "augment", "train_model", "predict", "accuracy"]
log = logging.getLogger(__name__)

# hook(x01, y, idx, gen) -> (x01, y) or (x01, y, extra_loss); idx are dataset indices of the batch. The optional
# third element is a scalar added to the loss (e.g. the regularisers of a trigger generator being trained).
BatchHook = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator],
                     tuple[torch.Tensor, ...]]


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    crop_padding: int = 4
    flip: bool = True
    amp: bool | None = None  # None: bf16 autocast on CUDA and on CPUs that support it well
    channels_last: bool = True
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def augment(x: torch.Tensor, gen: torch.Generator, padding: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, batched; works on any dtype."""
    n, _, h, w = x.shape
    if padding > 0:
        xp = F.pad(x, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=gen).to(x.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=gen).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        nidx = torch.arange(n, device=x.device)[:, None, None, None]
        cidx = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = xp[nidx, cidx, rows, cols]
    if flip:
        f = (torch.rand(n, generator=gen) < 0.5).to(x.device)
        x = torch.where(f[:, None, None, None], x.flip(3), x)
    return x


def train_batches(data: ImageData, batch_size: int, gen: torch.Generator, device: torch.device | str,
                  padding: int = 4, flip: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled epoch of ``(x in [0, 1], y)`` batches, randomly cropped (zero ``padding``) and flipped.

    A last batch of one image is dropped (BatchNorm cannot normalise it in train mode) unless it is the only one.
    """
    for i, (x, y) in enumerate(data.batches(batch_size, device, shuffle=True, generator=gen)):
        if len(y) < 2 and i > 0:
            continue
        yield augment(x, gen, padding, flip), y


@functools.cache
def cpu_has_bf16() -> bool:
    """True on CPUs with native bfloat16 arithmetic (AVX512-BF16 or AMX), where autocast pays off."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def channels_last_ok(model: nn.Module, device: torch.device) -> bool:
    """Whether channels-last memory is worth using (4-D weights) and safe for ``model`` on ``device``.

    torch 2.13's CPU kernels crash the process on two channels-last patterns, so these models stay contiguous on
    the CPU: GroupNorm (its backward segfaults when the input needs no gradient) and a strided 1x1 convolution
    with 2 to 7 input channels (its weight gradient corrupts the heap with one thread on AVX2 CPUs; seen on
    ResNet shortcuts at ``base_width=4``).
    """
    if not any(p.dim() == 4 for p in model.parameters()):
        return False
    if device.type != "cpu":
        return True
    return not any(isinstance(m, nn.GroupNorm) or (
        isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1 and m.in_channels < 8)
        for m in model.modules())


def amp_enabled(amp: bool | None, device: torch.device) -> bool:
    """bfloat16 autocast on or off: ``amp`` if given, else on for CUDA and for CPUs with native bfloat16."""
    if amp is not None:
        if amp and device.type == "cpu" and not cpu_has_bf16():
            _warn_emulated_bf16()
        return bool(amp)
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())


@functools.cache
def _warn_emulated_bf16() -> None:
    log.warning("bfloat16 autocast was asked for on a CPU without native bfloat16 (no AVX512-BF16 or AMX): it is "
                "emulated there, and a backward pass measured 27 times slower than fp32 (AVX2); leave amp unset")


def autocast(amp: bool | None, device: torch.device):
    """The project's one bfloat16 autocast context, on or off by :func:`amp_enabled`."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp_enabled(amp, device))


# 75 lines: the training loop (schedule, augmentation, hook, amp, per-epoch checkpoint, timing) reads best in one
# piece.
def train_model(model: nn.Module, data: ImageData, cfg: TrainConfig | None = None,
                batch_hook: BatchHook | None = None, extra_params: list[nn.Parameter] | None = None,
                device: str | torch.device | None = None,
                checkpoint: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train ``model`` in place on ``data`` (inputs normalised with ``data.mean/std``); returns statistics.

    ``batch_hook`` poisons each augmented batch and may return a third element, an extra loss term;
    ``extra_params`` (e.g. a trigger generator's) are optimised jointly with the model. ``checkpoint``: a file
    the training state (weights, ``extra_params``, optimiser, schedule, random-number states) is written to after
    every epoch and resumed from when it exists, so that an interrupted run ends with the same weights as an
    uninterrupted one; the caller removes it once the result is safe.
    """
    cfg = cfg or TrainConfig()
    dev = resolve_device(device, model)
    gen = torch.Generator().manual_seed(cfg.seed)
    net = SplitModel(model, data.mean, data.std).to(dev)
    channels_last = cfg.channels_last and channels_last_ok(model, dev)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    amp = amp_enabled(cfg.amp, dev)
    extras = list(extra_params or [])
    opt = torch.optim.SGD(list(model.parameters()) + extras, lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, nesterov=True)
    n = len(data)
    steps_per_epoch = max(1, n // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch,
                                                pct_start=0.25, anneal_strategy="linear")
    x_all = data.x.to(dev)
    y_all = data.y.to(dev)
    start, seen, before = 0, 0, 0.0
    if checkpoint is not None and os.path.exists(checkpoint):
        start, seen, before = _resume(checkpoint, cfg, n, model, extras, opt, sched, gen, dev)
    model.train()
    t0 = time.perf_counter()
    last_loss = float("nan")
    for epoch in progress(range(start, cfg.epochs), "train"):
        perm = torch.randperm(n, generator=gen)
        for i in range(steps_per_epoch):
            idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            xb = augment(x_all[idx.to(dev)], gen, cfg.crop_padding, cfg.flip).float().div_(255)
            yb = y_all[idx.to(dev)]
            extra_loss = None
            if batch_hook is not None:
                hooked = batch_hook(xb, yb, idx, gen)
                xb, yb = hooked[0], hooked[1]
                if len(hooked) > 2:
                    extra_loss = hooked[2]
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast(amp, dev):
                out = net(xb)
            loss = F.cross_entropy(out.float(), yb, label_smoothing=cfg.label_smoothing)
            if extra_loss is not None:
                loss = loss + extra_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(idx)
            last_loss = float(loss.detach())
        log.info("epoch %d/%d loss %.4f", epoch + 1, cfg.epochs, last_loss)
        if checkpoint is not None:
            _save_state(checkpoint, {
                "config": cfg.to_dict(), "n": n, "epoch": epoch + 1, "seen": seen,
                "elapsed": before + time.perf_counter() - t0, "model": model.state_dict(),
                "extras": [p.detach() for p in extras], "opt": opt.state_dict(), "sched": sched.state_dict(),
                "gen": gen.get_state(), "rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state(dev)} if dev.type == "cuda" else {})})
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elapsed = before + time.perf_counter() - t0
    model.eval()
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    return {"train_time_s": round(elapsed, 3), "images_per_s": round(seen / max(elapsed, 1e-9), 1),
            "final_loss": last_loss, "amp": amp, "device": str(dev), "config": cfg.to_dict()}


def _save_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(path, buf.getvalue())  # a run killed while saving leaves the previous epoch's state


def _resume(path: str | os.PathLike, cfg: TrainConfig, n: int, model: nn.Module, extras: list[nn.Parameter],
            opt: torch.optim.Optimizer, sched: Any, gen: torch.Generator, dev: torch.device) -> tuple[int, int, float]:
    """Load a :func:`train_model` checkpoint into the run's objects; returns (epochs done, images seen, seconds)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
        raise BanscanError(f"cannot read the training checkpoint {path} ({type(e).__name__}: {e}); delete it to "
                           "train from the start") from None
    if state.get("config") != cfg.to_dict() or state.get("n") != n or len(state.get("extras", ())) != len(extras):
        raise BanscanError(f"the training checkpoint {path} was written by another run (training config, data size "
                           "or model differ); delete it to train from the start")
    try:
        model.load_state_dict(state["model"])
        with torch.no_grad():
            for p, v in zip(extras, state["extras"], strict=True):
                p.copy_(v)
    except (RuntimeError, ValueError) as e:
        raise BanscanError(f"the training checkpoint {path} does not fit this model ({e}); delete it to train "
                           "from the start") from None
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    gen.set_state(state["gen"])
    torch.set_rng_state(state["rng"])
    if dev.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], dev)
    log.info("resuming from %s after epoch %d/%d", path, state["epoch"], cfg.epochs)
    return int(state["epoch"]), int(state["seen"]), float(state["elapsed"])


@torch.no_grad()
def predict(model: nn.Module, data: ImageData, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
            batch_size: int = 512, device: str | torch.device | None = None) -> torch.Tensor:
    """Predicted labels for every image (optionally transformed in ``[0, 1]`` space first)."""
    dev = resolve_device(device, model)
    net = SplitModel(model, data.mean, data.std).to(dev)
    preds = []
    with eval_mode(net):
        for x, _ in data.batches(batch_size, dev):
            if transform is not None:
                x = transform(x)
            with autocast(dev.type == "cuda", dev):
                preds.append(net(x).argmax(1).cpu())
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, data: ImageData, **kw: Any) -> float:
    """Top-1 accuracy on ``data``."""
    return float((predict(model, data, **kw) == data.y.cpu()).float().mean()) if len(data) else float("nan")
