"""Neural Cleanse (Wang et al., IEEE S&P 2019): per-class trigger reverse engineering and a MAD outlier test.

Paper: https://doi.org/10.1109/SP.2019.00031. Original code: github.com/bolunwang/backdoor.

For every class ``k`` a mask ``m`` (one value per pixel) and a pattern ``p`` (one value per pixel and channel),
both tanh-parametrised into ``[0, 1]``, are fitted with Adam (lr 0.1, betas (0.5, 0.9)) so that stamped images
``(1 - m) * x + m * p`` are classified as ``k`` while ``|m|_1`` stays small:
``CE(f((1 - m) x + m p), k) + cost * |m|_1``. A backdoor target needs a much smaller mask than the other
classes. The anomaly index of class ``k`` is ``(median(L) - L_k) / (1.4826 * MAD(L))`` over the L1 norms
``L`` of the best masks; the score is the index of the smallest-norm class, flagged at 2 (the paper's rule).

The cost schedule is a simplified version of the original one, per class:

* the original starts at cost 0, sets ``init_cost`` (1e-3) once the attack succeeds (>= 99%) for ``patience``
  epochs, then multiplies the cost by 2 after ``patience`` successful epochs and divides it by 2**1.5 after
  ``patience`` failing ones, runs up to 1000 epochs of 1,000 images (batch 32) with early stopping;
* here the cost starts at ``init_cost`` and the same up/down rule runs after every epoch (a pass over the
  optimisation images) for a fixed ``n_epochs``; the best mask is the smallest one among epochs whose attack
  success rate reached ``success_threshold`` (the last mask if none did; ``stats["reached"]`` says which).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .._utils import BanscanError, PhaseTimer, progress
from ..data import ImageData
from ..models import SplitModel
from . import register_detector
from ._base import Detector, Evidence
from ._inversion import train_batches

log = logging.getLogger(__name__)

MAD_CONSISTENCY = 1.4826  # makes the MAD a consistent estimator of the std of a normal distribution


def anomaly_indices(norms: torch.Tensor) -> torch.Tensor:
    """Signed anomaly index ``(median - L_k) / (1.4826 * MAD)`` of every class (positive = smaller mask)."""
    norms = norms.double()
    med = norms.median() if len(norms) % 2 else norms.quantile(0.5)
    dev = (norms - med).abs()
    mad = MAD_CONSISTENCY * (dev.median() if len(dev) % 2 else dev.quantile(0.5))
    return (med - norms) / mad.clamp_min(1e-12)


@register_detector("nc")
class NeuralCleanse(Detector):
    """Per-class mask-and-pattern trigger reverse engineering with the MAD anomaly index.

    Args:
        n_epochs: epochs per class (passes over the optimisation images).
        lr: Adam learning rate of the mask and pattern parameters (original 0.1, betas (0.5, 0.9)).
        init_cost: initial weight of the L1 mask term (original 1e-3).
        success_threshold: attack success rate a mask must reach to count (original 0.99).
        patience: epochs before the cost is raised or lowered (original 5; 2 here, for a 10-epoch budget).
        cost_up, cost_down: cost multiplier and divisor (original 2 and 2**1.5).
        seed, threshold, n_opt, n_eval, batch_size, split_layer: see :class:`~banscan.detectors.Detector`.
        amp: bfloat16 autocast for forward passes.

    Shape:
        Artifacts: ``masks`` ``(K, 1, H, W)``, ``patterns`` ``(K, C, H, W)`` (both in ``[0, 1]``), ``triggers``
        ``(K, C, H, W)`` = ``masks * patterns``, ``norms`` ``(K,)``.

    Example:
        >>> from banscan import create_model, ImageData
        >>> from banscan.detectors import NeuralCleanse
        >>> import torch
        >>> data = ImageData(torch.randint(0, 255, (64, 3, 16, 16), dtype=torch.uint8), torch.arange(64) % 4)
        >>> r = NeuralCleanse(n_opt=32, n_epochs=1).detect(create_model("resnet18", 4, base_width=4), data)
        >>> r.artifacts["masks"].shape
        torch.Size([4, 1, 16, 16])

    References:
        Wang et al., "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural Networks", S&P 2019.
    """

    name = "nc"
    default_threshold = 2.0
    threshold_source = "default: anomaly index > 2 (Neural Cleanse paper, MAD consistency constant 1.4826)"

    def __init__(self, *, n_epochs: int = 10, lr: float = 0.1, init_cost: float = 1e-3,
                 success_threshold: float = 0.99, patience: int = 2, cost_up: float = 2.0,
                 cost_down: float = 2.0 ** 1.5, seed: int = 0, threshold: float | None = None, n_opt: int = 2500,
                 n_eval: int = 5000, batch_size: int = 128, split_layer: str | None = None,
                 amp: bool = False) -> None:
        self.n_epochs = n_epochs
        self.lr = lr
        self.init_cost = init_cost
        self.success_threshold = success_threshold
        self.patience = patience
        self.cost_up = cost_up
        self.cost_down = cost_down
        self.seed = seed
        self.threshold = threshold
        self.n_opt = n_opt
        self.n_eval = n_eval
        self.batch_size = batch_size
        self.split_layer = split_layer
        self.amp = amp

    def _validate(self) -> None:
        if not isinstance(self.n_epochs, int) or self.n_epochs < 1:
            raise BanscanError(f"n_epochs must be an integer >= 1, got {self.n_epochs!r}")
        if not self.lr > 0 or self.init_cost < 0 or not 0 < self.success_threshold <= 1:
            raise BanscanError(f"need lr > 0, init_cost >= 0, 0 < success_threshold <= 1; got {self!r}")
        if self.patience < 1 or not self.cost_up > 1 or not self.cost_down > 1 or self.batch_size < 1:
            raise BanscanError(f"need patience >= 1, cost_up > 1, cost_down > 1, batch_size >= 1; got {self!r}")

    def reverse_class(self, net: SplitModel, opt: ImageData, k: int, gen: torch.Generator,
                      device: torch.device) -> dict[str, object]:
        """Fit the smallest mask and pattern that send the optimisation images to class ``k``."""
        c, h, w = opt.x.shape[1:]
        theta_m = (torch.rand(1, 1, h, w, generator=gen) * 2 - 1).to(device).requires_grad_(True)
        theta_p = (torch.rand(1, c, h, w, generator=gen) * 2 - 1).to(device).requires_grad_(True)
        optim = torch.optim.Adam([theta_m, theta_p], lr=self.lr, betas=(0.5, 0.9))
        cost, up, down = self.init_cost, 0, 0
        best = None
        last = None
        for _ in range(self.n_epochs):
            hits = seen = 0
            for x, _ in train_batches(opt, self.batch_size, device, gen, augmented=False):
                m = torch.tanh(theta_m) / 2 + 0.5
                p = torch.tanh(theta_p) / 2 + 0.5
                xs = (1 - m) * x + m * p
                yk = torch.full((len(x),), k, dtype=torch.long, device=device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp):
                    out = net(xs).float()
                loss = F.cross_entropy(out, yk) + cost * m.abs().sum()
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                hits += int((out.argmax(1) == k).sum())
                seen += len(x)
            asr = hits / max(1, seen)
            with torch.no_grad():
                m = torch.tanh(theta_m) / 2 + 0.5
                p = torch.tanh(theta_p) / 2 + 0.5
                norm = float(m.sum())
            last = (m[0].cpu(), p[0].cpu(), norm, asr)
            if asr >= self.success_threshold and (best is None or norm < best[2]):
                best = last
            if asr >= self.success_threshold:
                up, down = up + 1, 0
            else:
                up, down = 0, down + 1
            if up >= self.patience:
                cost, up = cost * self.cost_up, 0
            elif down >= self.patience:
                cost, down = cost / self.cost_down, 0
        chosen = best if best is not None else last
        assert chosen is not None
        return {"mask": chosen[0], "pattern": chosen[1], "norm": chosen[2], "asr": chosen[3],
                "reached": best is not None, "final_cost": cost}

    def _detect(self, net: SplitModel, opt: ImageData, evl: ImageData, timer: PhaseTimer,
                gen: torch.Generator, device: torch.device) -> Evidence:
        self._validate()
        k = net.num_classes
        results = []
        with timer.phase("reverse"):
            for cls in progress(range(k), "nc classes", total=k):
                results.append(self.reverse_class(net, opt, cls, gen, device))
        masks = torch.stack([r["mask"] for r in results])
        patterns = torch.stack([r["pattern"] for r in results])
        norms = torch.tensor([r["norm"] for r in results], dtype=torch.float64)
        with timer.phase("decision"):
            idx = anomaly_indices(norms)
            target = int(norms.argmin())
            # Attack success of the suspected target's reversed trigger on the held-out evaluation images.
            m, p = masks[target].to(device), patterns[target].to(device)
            hits = n = 0
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp):
                for x, y in evl.batches(self.batch_size * 2, device):
                    x = x[y != target]
                    if len(x) == 0:
                        continue
                    hits += int((net((1 - m) * x + m * p).argmax(1) == target).sum())
                    n += len(x)
        stats = {
            "norms": norms, "anomaly_indices": idx,
            "flagged_classes": [i for i in range(k) if float(idx[i]) > self.default_threshold],
            "asr_opt": [r["asr"] for r in results], "target_asr_eval": hits / max(1, n),
            "reached": [r["reached"] for r in results], "final_cost": [r["final_cost"] for r in results],
            "median_norm": float(norms.median()),
        }
        score = float(idx[target])
        return Evidence(score=score, target=target, stats=stats,
                        artifacts={"masks": masks, "patterns": patterns, "triggers": masks * patterns,
                                   "norms": norms.float()})
