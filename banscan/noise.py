"""Adversarial neuron noise on the affine parameters of normalisation layers (BAN, after ANP).

Noise is multiplicative: ``gamma * (1 + delta)``, ``beta * (1 + xi)``, one ``delta``/``xi`` per channel, installed
as a ``torch.nn.utils.parametrize`` parametrisation on a model the caller owns (always a copy in banscan).
The module also holds the BatchNorm helpers the detector and the mitigation share.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ._utils import BanscanError
from .models import norm_layers

__all__ = ["NeuronNoise", "bn_batch_stats", "recalibrate_bn"]


class _Scale(nn.Module):
    """``w -> w * (1 + noise)`` while ``on``; the identity otherwise."""

    def __init__(self, like: torch.Tensor) -> None:
        super().__init__()
        self.noise = nn.Parameter(torch.zeros_like(like), requires_grad=False)
        self.on = False

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * (1 + self.noise) if self.on else w


class NeuronNoise:
    """Per-channel multiplicative noise on every normalisation layer of ``model``.

    Args:
        model: a model you own (banscan always passes a deep copy); parametrisations are added to it and
            removed by :meth:`remove`.
        eps: the noise bound; random starts draw from ``U(-eps, eps)``.
    """

    def __init__(self, model: nn.Module, eps: float) -> None:
        layers = norm_layers(model)
        if not layers:
            raise BanscanError(
                f"{type(model).__name__} has no normalisation layer with affine parameters (BatchNorm, GroupNorm, "
                "LayerNorm); adversarial neuron noise needs at least one"
            )
        self.model, self.eps = model, float(eps)
        self.scales: list[_Scale] = []
        for _, m in layers:
            for pname in ("weight", "bias"):
                p = getattr(m, pname, None)
                if p is None:
                    continue
                s = _Scale(p.detach())
                parametrize.register_parametrization(m, pname, s, unsafe=True)
                self.scales.append(s)

    @property
    def n_params(self) -> int:
        return sum(s.noise.numel() for s in self.scales)

    def parameters(self) -> list[nn.Parameter]:
        return [s.noise for s in self.scales]

    def set_enabled(self, on: bool) -> None:
        for s in self.scales:
            s.on = on

    @contextlib.contextmanager
    def enabled(self, on: bool = True) -> Iterator[None]:
        prev = self.scales[0].on
        self.set_enabled(on)
        try:
            yield
        finally:
            self.set_enabled(prev)

    @torch.no_grad()
    def reset(self, generator: torch.Generator | None, random: bool = True) -> None:
        for s in self.scales:
            if random:
                r = torch.rand(s.noise.shape, generator=generator, device="cpu").to(s.noise.device)
                s.noise.copy_(r.mul_(2 * self.eps).sub_(self.eps))
            else:
                s.noise.zero_()

    @torch.no_grad()
    def project(self) -> None:
        for s in self.scales:
            s.noise.clamp_(-self.eps, self.eps)

    def ascend(self, loss_fn: Callable[[], torch.Tensor], step_size: float, project: bool) -> float:
        """One signed-gradient ascent step on ``loss_fn()`` with respect to the noise."""
        params = self.parameters()
        for p in params:
            p.requires_grad_(True)
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(params, grads):
                if g is not None:
                    p.add_(step_size * g.sign())
        for p in params:
            p.requires_grad_(False)
        if project:
            self.project()
        return float(loss.detach())

    def remove(self) -> None:
        """Take the parametrisations off, leaving the original parameters in place."""
        for _, m in norm_layers(self.model):
            for pname in ("weight", "bias"):
                if parametrize.is_parametrized(m, pname):
                    parametrize.remove_parametrizations(m, pname, leave_parametrized=False)


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def bn_batch_stats(model: nn.Module) -> Iterator[None]:
    """Normalise with batch statistics without touching the running statistics (BN momentum 0)."""
    bns = _batchnorms(model)
    saved = [(m.training, m.momentum) for m in bns]
    for m in bns:
        m.train()
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (tr, mom) in zip(bns, saved):
            m.train(tr)
            m.momentum = mom


@torch.no_grad()
def recalibrate_bn(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor],
                   batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm's running statistics as an exact average over ``batches``.

    Deterministic: the statistics are the cumulative mean over all batches (momentum ``None``), not an
    exponential average of whichever batches came last. Returns the number of BatchNorm layers updated.
    """
    bns = _batchnorms(model)
    saved = [(m.training, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for x in batches:
            forward(x)
    finally:
        for m, (tr, mom) in zip(bns, saved):
            m.train(tr)
            m.momentum = mom
    return len(bns)


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y)
