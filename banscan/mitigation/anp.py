"""ANP: Adversarial Neuron Pruning (Wu & Wang, "Adversarial Neuron Perturbations Expose Backdoors in Deep
Neural Networks", NeurIPS 2021, https://arxiv.org/abs/2110.14430), the ancestor of BAN's neuron noise.

A mask ``m`` in ``[0, 1]`` on every normalisation channel (neuron) is optimised, with the weights frozen, to keep
the clean loss low both as is and under adversarial neuron noise:
``alpha * CE(f_m(x), y) + (1 - alpha) * max_noise CE(f_{m, noise}(x), y)``. Neurons whose mask the noise drives
down are the ones the backdoor needs; they are pruned (``gamma = 0``) in the original model.

Pruning threshold, chosen without any attack knowledge (test ASR is never looked at, unlike BackdoorBench's
ANP, which picks the pruning level by test ASR):

* ``prune_by="threshold"`` (default): prune every neuron whose mask ends below ``threshold`` (0.2, ANP's default).
* ``prune_by="accuracy"``: hold out ``holdout`` of the clean data, fit the masks on the rest, then take the
  largest threshold on the grid 0.05, 0.10, ..., 0.95 whose pruning keeps clean accuracy on the held-out part
  within ``max_acc_drop`` of the unpruned model's.

Departures: the noise is BAN's multiplicative noise (:class:`banscan.noise.NeuronNoise`) stacked on the mask, so
a masked channel's scale is ``gamma * m * (1 + delta)`` where ANP writes ``gamma * (m + delta)``; the two agree at
``m = 1`` and differ only in that the noise shrinks with the mask. BatchNorm normalises with batch statistics
during mask fitting (ANP trains in train mode) without writing running statistics; pruning is applied to the
untouched original weights and statistics.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from .._utils import BanscanError, PhaseTimer, progress
from ..data import ImageData
from ..train import autocast, train_batches
from ..models import norm_layers, SplitModel
from ..noise import NeuronNoise, bn_batch_stats
from . import register_mitigation
from ._base import Mitigation, check_positive, cross_entropy

_PRUNE_BY = ("threshold", "accuracy")
_GRID = [round(0.05 * i, 2) for i in range(1, 20)]


class _Mask(nn.Module):
    """``w -> w * m``: one mask value per channel, trainable, kept in ``[0, 1]`` by the caller."""

    def __init__(self, like: torch.Tensor) -> None:
        super().__init__()
        self.mask = nn.Parameter(torch.ones_like(like))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


@register_mitigation("anp")
class ANP(Mitigation):
    """Adversarial Neuron Pruning with an attack-agnostic pruning rule.

    Args:
        eps: bound of the neuron noise (ANP: 0.4).
        n_steps: signed-gradient ascent steps per batch (step size ``eps / n_steps``).
        alpha: weight of the clean loss; ``1 - alpha`` weighs the loss under noise (ANP: 0.2).
        mask_lr: SGD learning rate of the masks (momentum 0.9; ANP: 0.2).
        n_iters: mask optimisation steps (ANP: 2000).
        prune_by: ``"threshold"`` or ``"accuracy"`` (see the module docstring).
        threshold: mask value below which a neuron is pruned (``prune_by="threshold"``).
        max_acc_drop: allowed held-out clean-accuracy drop (``prune_by="accuracy"``).
        holdout: share of the clean data held out to choose the threshold (``prune_by="accuracy"``).
        batch_size: images per step.
        augment: random crop (padding 4) and horizontal flip on the mask-fitting batches.
        amp: bfloat16 autocast for the forward passes (``None``: where the hardware supports it, as the detectors).
        seed: seeds the batches, the augmentation, the noise and the hold-out split.

    Example:
        >>> from banscan import create_model
        >>> from banscan.synthetic import make_synthetic
        >>> r = ANP(n_iters=2).repair(create_model("resnet18", 4, base_width=4), make_synthetic(64, 4, 16))
        >>> r.stats["n_neurons"] > 0
        True
    """

    # One keyword argument per hyperparameter (the estimator contract, docs/architecture.md): no logic here.
    def __init__(self, *, eps: float = 0.4, n_steps: int = 1, alpha: float = 0.2, mask_lr: float = 0.2,
                 n_iters: int = 2000, prune_by: str = "threshold", threshold: float = 0.2,
                 max_acc_drop: float = 0.02, holdout: float = 0.2, batch_size: int = 128, augment: bool = True,
                 amp: bool = False, seed: int = 0) -> None:
        self.eps = eps
        self.n_steps = n_steps
        self.alpha = alpha
        self.mask_lr = mask_lr
        self.n_iters = n_iters
        self.prune_by = prune_by
        self.threshold = threshold
        self.max_acc_drop = max_acc_drop
        self.holdout = holdout
        self.batch_size = batch_size
        self.augment = augment
        self.amp = amp
        self.seed = seed

    def _validate(self) -> None:
        super()._validate()
        check_positive("eps", self.eps)
        check_positive("n_steps", self.n_steps, integer=True)
        check_positive("mask_lr", self.mask_lr)
        check_positive("n_iters", self.n_iters, integer=True)
        check_positive("max_acc_drop", self.max_acc_drop, allow_zero=True)
        if self.prune_by not in _PRUNE_BY:
            raise BanscanError(f"prune_by must be one of {_PRUNE_BY}, got {self.prune_by!r}")
        for name in ("alpha", "threshold"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 1:
                raise BanscanError(f"{name} must be in [0, 1], got {v!r}")
        if not isinstance(self.holdout, (int, float)) or not 0 < self.holdout < 1:
            raise BanscanError(f"holdout must be a fraction in (0, 1), got {self.holdout!r}")

    def fit_masks(self, net: SplitModel, data: ImageData, gen: torch.Generator, device: torch.device
                  ) -> tuple[list[torch.Tensor], list[float]]:
        """Optimise the neuron masks on ``data`` (weights frozen); returns one mask per norm layer and losses."""
        model = net.model
        layers = norm_layers(model)
        if not layers:
            raise BanscanError(f"{type(model).__name__} has no normalisation layer with affine parameters; ANP "
                               "masks their channels")
        model.requires_grad_(False)
        masks = []
        for _, m in layers:
            mk = _Mask(m.weight.detach())
            parametrize.register_parametrization(m, "weight", mk, unsafe=True)
            masks.append(mk.mask)
        noise = NeuronNoise(model, self.eps)
        opt = torch.optim.SGD(masks, lr=self.mask_lr, momentum=0.9)
        pad = 4 if self.augment else 0
        losses: list[float] = []

        def ce(x: torch.Tensor, y: torch.Tensor):
            def f() -> torch.Tensor:
                with autocast(self.amp, device):
                    return cross_entropy(net(x), y)
            return f

        it = 0
        with bn_batch_stats(net):
            bar = iter(progress(range(self.n_iters), "anp"))
            while it < self.n_iters:
                for x, y in train_batches(data, self.batch_size, gen, device, pad, bool(self.augment)):
                    noise.reset(gen)
                    with noise.enabled(True):
                        for _ in range(self.n_steps):
                            noise.ascend(ce(x, y), self.eps / self.n_steps, project=True)
                        loss_rob = ce(x, y)()
                    loss_nat = ce(x, y)()
                    loss = self.alpha * loss_nat + (1 - self.alpha) * loss_rob
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    with torch.no_grad():
                        for mk in masks:
                            mk.clamp_(0, 1)
                    losses.append(float(loss.detach()))
                    it += 1
                    next(bar, None)
                    if it >= self.n_iters:
                        break
        noise.remove()  # takes every parametrisation (masks included) off, restoring the original weights
        return [mk.detach().clone() for mk in masks], losses

    @staticmethod
    def prune(model: nn.Module, masks: list[torch.Tensor], threshold: float) -> int:
        """Zero ``gamma`` of every channel whose mask is below ``threshold``; returns how many were pruned."""
        n = 0
        with torch.no_grad():
            for (_, m), mk in zip(norm_layers(model), masks):
                off = mk < threshold
                m.weight[off] = 0
                n += int(off.sum())
        return n

    @torch.no_grad()
    def _accuracy(self, net: SplitModel, data: ImageData, device: torch.device) -> float:
        net.eval()
        hits = 0
        for x, y in data.batches(self.batch_size * 2, device):
            with autocast(self.amp, device):
                hits += int((net(x).argmax(1) == y).sum())
        return hits / len(data)

    def _repair(self, net: SplitModel, data: ImageData, timer: PhaseTimer, gen: torch.Generator,
                device: torch.device) -> dict[str, Any]:
        original = {k: v.clone() for k, v in net.model.state_dict().items()}
        fit, held = data, None
        if self.prune_by == "accuracy":
            n_held = max(1, int(round(self.holdout * len(data))))
            if len(data) - n_held < 2:
                raise BanscanError(f"{len(data)} clean images are too few to hold out {self.holdout:.0%}")
            held, fit = data.split(n_held, seed=self.seed)
        with timer.phase("masks"):
            masks, losses = self.fit_masks(net, fit, gen, device)
        net.model.load_state_dict(original)
        stats: dict[str, Any] = {"n_neurons": sum(int(m.numel()) for m in masks), "loss_first": losses[0],
                                 "loss_last": losses[-1], "mask_mean": float(torch.cat(masks).mean()),
                                 "mask_below_0.2": int(sum(int((m < 0.2).sum()) for m in masks))}
        with timer.phase("prune"):
            thr = float(self.threshold)
            if held is not None:
                base = self._accuracy(net, held, device)
                curve = []
                thr = 0.0
                for t in _GRID:
                    net.model.load_state_dict(original)
                    self.prune(net.model, masks, t)
                    acc = self._accuracy(net, held, device)
                    curve.append([t, round(acc, 5)])
                    if acc >= base - self.max_acc_drop:
                        thr = t
                stats.update(holdout_acc_unpruned=base, holdout_curve=curve, n_holdout=len(held))
                net.model.load_state_dict(original)
            stats["n_pruned"] = self.prune(net.model, masks, thr)
            stats["threshold_used"] = thr
            stats["pruned_fraction"] = stats["n_pruned"] / max(stats["n_neurons"], 1)
        return stats
