"""Plain fine-tuning on the defender's clean data: the baseline with BAN's fine-tuning budget.

The same data, optimiser, schedule and augmentation as :class:`banscan.mitigation.ban_ft.BANFineTune`, with the
neuron-noise term taken out, so a comparison isolates what the adversarial neuron noise adds.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..models import SplitModel
from .._utils import BanscanError, PhaseTimer, progress
from ..data import ImageData
from ..train import autocast, train_batches
from . import register_mitigation
from ._base import Mitigation, check_positive, cross_entropy

log = logging.getLogger(__name__)


@register_mitigation("ft")
class FineTune(Mitigation):
    """Fine-tune every weight on clean data with cross-entropy (BatchNorm in train mode, as usual).

    Args:
        epochs: passes over the clean data (BAN's budget: 25).
        lr: SGD learning rate (constant; BAN's README value 0.005).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        batch_size: images per step; each epoch is shuffled.
        augment: random crop (padding 4) and horizontal flip, as in training.
        amp: bfloat16 autocast for the forward passes (``None``: where the hardware supports it, as the detectors).
        seed: seeds the shuffling and the augmentation.

    Example:
        >>> import torch
        >>> from banscan import create_model
        >>> from banscan.synthetic import make_synthetic
        >>> data = make_synthetic(64, 4, 16)
        >>> r = FineTune(epochs=1).repair(create_model("resnet18", 4, base_width=4), data)
        >>> sorted(r.model.state_dict()) == sorted(create_model("resnet18", 4, base_width=4).state_dict())
        True
    """

    def __init__(self, *, epochs: int = 25, lr: float = 0.005, momentum: float = 0.9, weight_decay: float = 5e-4,
                 batch_size: int = 128, augment: bool = True, amp: bool = False, seed: int = 0) -> None:
        self.epochs = epochs
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.augment = augment
        self.amp = amp
        self.seed = seed

    def _validate(self) -> None:
        super()._validate()
        check_positive("epochs", self.epochs, integer=True)
        check_positive("lr", self.lr)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        if not isinstance(self.momentum, (int, float)) or not 0 <= self.momentum < 1:
            raise BanscanError(f"momentum must be in [0, 1), got {self.momentum!r}")

    def _optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    # hooks the noise variant overrides
    # Hooks for the noise variant; ``ctx`` is whatever ``_setup`` returns (run state never lives on ``self``).
    def _setup(self, net: SplitModel, data: ImageData, gen: torch.Generator, device: torch.device) -> Any:
        return None

    def _weights(self, net: SplitModel, ctx: Any) -> list[torch.nn.Parameter]:
        return [p for p in net.model.parameters() if p.requires_grad]

    def _loss(self, net: SplitModel, ctx: Any, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
              device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        with autocast(self.amp, device):
            out = net(x)
        return cross_entropy(out, y), {}

    def _finish(self, net: SplitModel, ctx: Any, data: ImageData, device: torch.device,
                stats: dict[str, Any]) -> None:
        pass

    def _repair(self, net: SplitModel, data: ImageData, timer: PhaseTimer, gen: torch.Generator,
                device: torch.device) -> dict[str, Any]:
        with timer.phase("setup"):
            ctx = self._setup(net, data, gen, device)
        opt = self._optimizer(self._weights(net, ctx))
        pad = 4 if self.augment else 0
        history: list[dict[str, float]] = []
        steps = 0
        with timer.phase("finetune"):
            net.train()
            for epoch in progress(range(self.epochs), self.name):
                sums: dict[str, float] = {}
                nb = 0
                for x, y in train_batches(data, self.batch_size, gen, device, pad, bool(self.augment)):
                    loss, parts = self._loss(net, ctx, x, y, gen, device)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    steps += 1
                    nb += 1
                    for k, v in {"loss": float(loss.detach()), **parts}.items():
                        sums[k] = sums.get(k, 0.0) + v
                means = {k: round(v / max(nb, 1), 5) for k, v in sums.items()}
                history.append(means)
                log.info("%s epoch %d/%d %s", self.name, epoch + 1, self.epochs, means)
            net.eval()
        stats: dict[str, Any] = {"steps": steps, "epochs_run": self.epochs, "loss_history": history}
        with timer.phase("finish"):
            self._finish(net, ctx, data, device, stats)
        return stats
