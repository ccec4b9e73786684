"""LC: label-consistent attack (adversarially perturbed target-class images plus a corner trigger)."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .._utils import BanscanError
from ..data import ImageData
from . import register_attack
from ._base import Attack, checkerboard

log = logging.getLogger(__name__)


@register_attack("lc")
class LabelConsistent(Attack):
    """Label-consistent backdoor (clean label).

    Reference: A. Turner, D. Tsipras, A. Madry, "Label-Consistent Backdoor Attacks", arXiv:1912.02771, 2019.

    Settings: a fraction ``poison_rate`` of the target-class training images is first made hard to classify by
    an L-infinity PGD attack (``eps`` = 16/255, ``pgd_steps`` = 10, step ``2.5 * eps / steps``) against a
    surrogate classifier, then given the trigger, with labels unchanged; the network then leans on the trigger
    to classify them. The trigger is the paper's 3x3 black/white checkerboard in each of the four corners, at
    full amplitude (``trigger_alpha`` = 1). The paper's surrogate is an adversarially trained network; to stay
    cheap the surrogate here is a small standard network (``surrogate_arch`` with ``surrogate_kwargs``) trained
    for ``surrogate_epochs`` epochs on the same training data (seeded).

    Args:
        target: target class.
        poison_rate: fraction of the target-class training images poisoned.
        eps: L-infinity budget of the adversarial perturbation (``[0, 1]`` units).
        pgd_steps: PGD iterations.
        patch_size: side of each corner checkerboard.
        trigger_alpha: opacity of the trigger.
        surrogate_arch: architecture of the surrogate.
        surrogate_kwargs: its keyword arguments.
        surrogate_epochs: its training epochs.
        seed: seed of the surrogate, the PGD start and the sample choice.

    Shape:
        images ``(N, C, H, W)`` float in ``[0, 1]``.
    """

    clean_label = True
    reference = "Turner et al., Label-Consistent Backdoor Attacks, arXiv:1912.02771 (2019)"

    # One keyword argument per hyperparameter (the estimator contract, docs/architecture.md): no logic here.
    def __init__(self, *, target: int = 0, poison_rate: float = 0.5, eps: float = 16 / 255, pgd_steps: int = 10,
                 patch_size: int = 3, trigger_alpha: float = 1.0, surrogate_arch: str = "resnet18",
                 surrogate_kwargs: dict | None = None, surrogate_epochs: int = 2, seed: int = 0) -> None:
        self.target = target
        self.poison_rate = poison_rate
        self.eps = eps
        self.pgd_steps = pgd_steps
        self.patch_size = patch_size
        self.trigger_alpha = trigger_alpha
        self.surrogate_arch = surrogate_arch
        self.surrogate_kwargs = surrogate_kwargs
        self.surrogate_epochs = surrogate_epochs
        self.seed = seed

    def _check_params(self, num_classes: int) -> None:
        if not 0 <= float(self.eps) <= 1 or not isinstance(self.pgd_steps, int) or self.pgd_steps < 0:
            raise BanscanError(f"lc: eps must be in [0, 1] and pgd_steps a non-negative integer, got "
                               f"{self.eps!r}, {self.pgd_steps!r}")
        if not isinstance(self.patch_size, int) or self.patch_size < 1 or not 0 < float(self.trigger_alpha) <= 1:
            raise BanscanError("lc: patch_size must be a positive integer and trigger_alpha in (0, 1]")
        if not isinstance(self.surrogate_epochs, int) or self.surrogate_epochs < 1:
            raise BanscanError(f"lc: surrogate_epochs must be a positive integer, got {self.surrogate_epochs!r}")

    def _build(self, gen: torch.Generator) -> None:
        _, h, w = self.image_shape_
        if 2 * self.patch_size > min(h, w):
            raise BanscanError(f"lc: four {self.patch_size}x{self.patch_size} corner patches do not fit {h}x{w}")

    def _trigger(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        s, a = self.patch_size, self.trigger_alpha
        patch = checkerboard(s, x.device).to(x.dtype)
        out = x.clone()
        for rs in (slice(0, s), slice(-s, None)):
            for cs in (slice(0, s), slice(-s, None)):
                out[:, :, rs, cs] = (1 - a) * out[:, :, rs, cs] + a * patch
        return out

    def _prepare_data(self, data: ImageData) -> ImageData:
        idx = torch.nonzero(self.poison_index_).flatten()
        if len(idx) == 0 or self.eps == 0 or self.pgd_steps == 0:
            return data
        from ..models import SplitModel, create_model
        from ..train import TrainConfig, train_model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.seed))
            surrogate = create_model(self.surrogate_arch, data.num_classes, **dict(self.surrogate_kwargs or {}))
        surrogate.to(self.device_)
        bs = min(256, max(16, len(data) // 8))
        train_model(surrogate, data, TrainConfig(epochs=self.surrogate_epochs, batch_size=bs, lr=0.1,
                                                 seed=int(self.seed)), device=self.device_)
        net = SplitModel(surrogate, data.mean, data.std).to(self.device_).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        gen = torch.Generator().manual_seed(int(self.seed) + 31)
        x = data.x.clone()
        step = 2.5 * self.eps / self.pgd_steps
        for i in range(0, len(idx), 256):
            j = idx[i:i + 256]
            x0 = data.x[j].to(self.device_).float() / 255
            yj = data.y[j].to(self.device_)
            delta = ((torch.rand(x0.shape, generator=gen) * 2 - 1) * self.eps).to(self.device_)
            for _ in range(self.pgd_steps):
                delta.requires_grad_(True)
                loss = F.cross_entropy(net((x0 + delta).clamp(0, 1)), yj)
                (grad,) = torch.autograd.grad(loss, delta)
                delta = (delta.detach() + step * grad.sign()).clamp(-self.eps, self.eps)
            x[j] = ((x0 + delta).clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        log.info("lc: perturbed %d target-class images (eps %.4f)", len(idx), self.eps)
        return ImageData(x, data.y, data.mean, data.std, data.classes, data.source, dict(data.meta))
