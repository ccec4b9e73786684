"""MM-BD: post-training detection of backdoors with a maximum-margin statistic (Wang et al., S&P 2024).

Paper: https://arxiv.org/abs/2205.06900. Official code: github.com/wanghangpsu/MM-BD (``univ_bd.py``).

For each class ``t``, inputs are optimised from uniform noise to maximise the margin ``logit_t - max_{j != t}
logit_j``; a backdoor's trigger is a pattern that drives its target's logit far beyond what any natural class
reaches, so the target's maximum margin is an outlier among the classes. The statistic needs **no clean data**
(the data only supplies the normalisation and the input shape). The verdict is MM-BD's: a gamma distribution is
fitted to the ``K - 1`` smaller per-class maxima, and the model is flagged when the largest one's p-value
``1 - F(max)^K`` is below 0.05; the score is ``-log10(p)``.

Departures from the official code, all stated:

* the official code re-creates its SGD optimiser (lr 0.01, momentum 0.2) at every step, so its momentum never
  acts; here plain gradient steps of ``lr`` do the same thing;
* all classes are optimised together in one batch (the margins of different classes do not interact in eval
  mode); each class still stops on its own when its loss changes by less than ``tol`` (relative), as there;
* the margins are computed in float32 after the optimisation, under the same clamp to ``[0, 1]``.
"""

from __future__ import annotations

import math

import torch

from .._utils import BanscanError, PhaseTimer, progress
from ..data import ImageData
from ..models import SplitModel
from ..train import amp_enabled, autocast
from . import register_detector
from ._base import Detector, Evidence
from ._outlier import mad_index, max_class_pvalue


def _margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    own = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    return own - other


@register_detector("mmbd")
class MMBD(Detector):
    """Maximum-margin backdoor detection (data-free).

    Args:
        n_images: random starting images per class (official: 30).
        n_steps: gradient steps at most (official: 300).
        lr: step size of the margin ascent (official: 0.01).
        tol: a class stops once its loss changes by less than this fraction (official: 1e-5).
        pvalue: flag the model when the largest class's p-value is below this (official: 0.05).
        seed, threshold, n_opt, n_eval, batch_size, split_layer: as for every detector (the clean data is only
            used for its normalisation and shape; ``threshold`` is on ``-log10(p)``).
        amp: bfloat16 autocast for the optimisation (``None``: on CUDA and CPUs with native bf16).
    """

    name = "mmbd"
    default_threshold = -math.log10(0.05)
    threshold_source = "MM-BD's rule p < 0.05 on the largest class (score = -log10 p)"

    def __init__(self, *, n_images: int = 30, n_steps: int = 300, lr: float = 0.01, tol: float = 1e-5,
                 pvalue: float = 0.05, seed: int = 0, threshold: float | None = None, n_opt: int = 1,
                 n_eval: int = 1, batch_size: int = 300, split_layer: str | None = None,
                 amp: bool | None = None) -> None:
        self.n_images = n_images
        self.n_steps = n_steps
        self.lr = lr
        self.tol = tol
        self.pvalue = pvalue
        self.seed = seed
        self.threshold = threshold
        self.n_opt = n_opt
        self.n_eval = n_eval
        self.batch_size = batch_size
        self.split_layer = split_layer
        self.amp = amp

    def _detect(self, net: SplitModel, opt: ImageData, evl: ImageData, timer: PhaseTimer,
                gen: torch.Generator, device: torch.device) -> Evidence:
        if self.n_images < 1 or self.n_steps < 1 or not self.lr > 0 or not 0 < self.pvalue < 1:
            raise BanscanError(f"need n_images, n_steps >= 1, lr > 0 and 0 < pvalue < 1; got {self!r}")
        k, amp = net.num_classes, amp_enabled(self.amp, device)
        labels = torch.arange(k, device=device).repeat_interleave(self.n_images)
        x = torch.rand((len(labels), *opt.image_shape), generator=gen).to(device).requires_grad_(True)
        active = torch.ones(k, dtype=torch.bool, device=device)
        last = torch.full((k,), 1000.0, device=device)
        steps = torch.zeros(k, dtype=torch.long)
        with timer.phase("margins"):
            for _ in progress(range(self.n_steps), "margins"):
                with autocast(amp, device):
                    logits = net(x.clamp(0, 1)).float()
                per_class = -_margins(logits, labels).view(k, self.n_images).sum(1)
                (g,) = torch.autograd.grad(per_class[active].sum(), x)
                with torch.no_grad():
                    x -= self.lr * g * active.repeat_interleave(self.n_images).view(-1, 1, 1, 1)
                    steps += active.cpu().long()
                    loss = per_class.detach()
                    active &= (last - loss).abs() / last.abs().clamp(min=1e-12) >= self.tol
                    last = loss
                if not active.any():
                    break
            with torch.no_grad():
                m = _margins(net(x.clamp(0, 1)).float(), labels).view(k, self.n_images).amax(1).cpu()
        p = max_class_pvalue(m.tolist())
        stats = {"max_margin": m.tolist(), "pvalue": p, "mad_index": mad_index(m.tolist()),
                 "steps_per_class": steps.tolist(), "amp": amp}
        return Evidence(score=-math.log10(max(p, 1e-300)), target=int(m.argmax()), stats=stats)
