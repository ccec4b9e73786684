"""Neural Cleanse (Wang et al., IEEE S&P 2019): per-class trigger reverse engineering and a MAD outlier test.

Paper: https://doi.org/10.1109/SP.2019.00031. Original code: github.com/bolunwang/backdoor.

For every class ``k`` a mask ``m`` (one value per pixel) and a pattern ``p`` (one value per pixel and channel),
both tanh-parametrised into ``[0, 1]``, are fitted with Adam (lr 0.1, betas (0.5, 0.9)) so that stamped images
``(1 - m) * x + m * p`` are classified as ``k`` while ``|m|_1`` stays small:
``CE(f((1 - m) x + m p), k) + cost * |m|_1``. A backdoor target needs a much smaller mask than the other
classes. The anomaly index of class ``k`` is ``(median(L) - L_k) / (1.4826 * MAD(L))`` over the L1 norms
``L`` of the best masks; the score is the index of the smallest-norm class, flagged at 2 (the paper's rule).

Budget and cost schedule. The defaults are BackdoorBench's (``defense/nc.py`` with
``config/defense/nc/cifar10.yaml``): 80 epochs per class over 5% of the training set (2,500 images) in batches of
256 with its training augmentation (about 800 updates per class), attack-success threshold 98%, patience 5, the
cost starting at ``init_cost`` (1e-3), and early stopping (patience 25, threshold 0.99). Presets
(``--preset NAME``):

* ``original``: the original code's budget (``visualizer.py`` with ``gtsrb_visualize_example.py``): 1000 epochs
  of 31 mini-batches of 32 images (about 31,000 updates per class), success threshold 99%, early-stop threshold
  1.0, no augmentation, and the cost starting at 0 (set to ``init_cost`` once the attack has succeeded for
  ``patience`` epochs);
* ``fast``: the short budget banscan used before (10 epochs of full passes at batch 128, patience 2, success
  99%, no early stop, no augmentation): about 200 updates per class. It is not any published setting.

The schedule, in both codes and here: after each epoch, if the cost is 0 and the epoch's mean attack success
reached the threshold for ``patience`` epochs the cost becomes ``init_cost``; ``patience`` successful epochs
multiply it by ``cost_up`` (2), ``patience`` failing ones divide it by ``cost_down`` (2**1.5); the best mask is
the end-of-epoch mask of the successful epoch with the smallest mean L1 norm (the last mask if none succeeded;
``stats["reached"]`` says which); with ``early_stop`` the search for a class ends once the cost has gone both
up and down and the best norm has not improved by the factor ``early_stop_threshold`` for
``early_stop_patience`` epochs. Departures: the images are the defender's clean optimisation part (the
original samples a generator over its test set); the mask has no up-sampling (``UPSAMPLE_SIZE = 1``, as in
the original's example); the initial values and batches are seeded.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import torch
import torch.nn.functional as F

from .._utils import BanscanError, PhaseTimer, progress
from ..data import ImageData
from ..models import SplitModel
from ..train import autocast
from . import register_detector
from ._base import Detector, Evidence
from ._inversion import BatchStream, unit_tanh

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
        n_epochs: epochs per class (BackdoorBench ``nc_epoch=80``; original ``STEPS=1000``).
        batches_per_epoch: mini-batches per epoch, drawn from an endless shuffled stream (original 31); None
            for one full pass over the optimisation images (BackdoorBench).
        lr: Adam learning rate of the mask and pattern parameters (both codes 0.1, betas (0.5, 0.9)).
        init_cost: weight of the L1 mask term once set (both codes 1e-3).
        cost_from_zero: start the cost at 0 and set ``init_cost`` after ``patience`` successful epochs (original).
        success_threshold: attack success rate a mask must reach to count (BackdoorBench 0.98, original 0.99).
        patience: epochs before the cost is set, raised or lowered (both codes 5).
        cost_up, cost_down: cost multiplier and divisor (both codes 2 and 2**1.5).
        early_stop: stop a class's search early (both codes True).
        early_stop_threshold, early_stop_patience: the early-stop rule (BackdoorBench 0.99 and 25; original 1.0
            and 25).
        augment: random crop and flip on the optimisation batches (BackdoorBench's training transform).
        seed, threshold, n_opt, n_eval, batch_size, split_layer: see :class:`~banscan.detectors.Detector`.
        amp: bfloat16 autocast for forward passes (None: :func:`banscan.train.amp_enabled` decides).

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

    presets: ClassVar[dict[str, dict]] = {
        "backdoorbench": {},
        "original": dict(n_epochs=1000, batches_per_epoch=31, batch_size=32, cost_from_zero=True,
                         success_threshold=0.99, early_stop_threshold=1.0, augment=False),
        "fast": dict(n_epochs=10, batch_size=128, patience=2, success_threshold=0.99, early_stop=False,
                     augment=False),
    }

    def __init__(self, *, n_epochs: int = 80, batches_per_epoch: int | None = None, lr: float = 0.1,
                 init_cost: float = 1e-3, cost_from_zero: bool = False, success_threshold: float = 0.98,
                 patience: int = 5, cost_up: float = 2.0, cost_down: float = 2.0 ** 1.5, early_stop: bool = True,
                 early_stop_threshold: float = 0.99, early_stop_patience: int = 25, augment: bool = True,
                 seed: int = 0, threshold: float | None = None, n_opt: int = 2500, n_eval: int = 5000,
                 batch_size: int = 256, split_layer: str | None = None, amp: bool | None = False) -> None:
        self.n_epochs = n_epochs
        self.batches_per_epoch = batches_per_epoch
        self.lr = lr
        self.init_cost = init_cost
        self.cost_from_zero = cost_from_zero
        self.success_threshold = success_threshold
        self.patience = patience
        self.cost_up = cost_up
        self.cost_down = cost_down
        self.early_stop = early_stop
        self.early_stop_threshold = early_stop_threshold
        self.early_stop_patience = early_stop_patience
        self.augment = augment
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
        bpe = self.batches_per_epoch
        if bpe is not None and (isinstance(bpe, bool) or not isinstance(bpe, int) or bpe < 1):
            raise BanscanError(f"batches_per_epoch must be None or an integer >= 1, got {bpe!r}")
        if not isinstance(self.early_stop_patience, int) or self.early_stop_patience < 1 or \
                not self.early_stop_threshold > 0:
            raise BanscanError(f"need early_stop_patience >= 1 and early_stop_threshold > 0; got {self!r}")

    def reverse_class(self, net: SplitModel, opt: ImageData, k: int, gen: torch.Generator,
                      device: torch.device) -> dict[str, object]:
        """Fit the smallest mask and pattern that send the optimisation images to class ``k``."""
        c, h, w = opt.x.shape[1:]
        theta_m = (torch.rand(1, 1, h, w, generator=gen) * 2 - 1).to(device).requires_grad_(True)
        theta_p = (torch.rand(1, c, h, w, generator=gen) * 2 - 1).to(device).requires_grad_(True)
        optim = torch.optim.Adam([theta_m, theta_p], lr=self.lr, betas=(0.5, 0.9))
        stream = BatchStream(opt, self.batch_size, device, gen, bool(self.augment))
        cost = 0.0 if self.cost_from_zero else self.init_cost
        up = down = set_count = stop_count = 0
        went_up = went_down = False
        best = last = None
        best_reg = stop_best = float("inf")
        epochs = 0
        for _ in range(self.n_epochs):
            epochs += 1
            accs, regs = [], []
            for x, _ in stream.epoch(self.batches_per_epoch):
                m, p = unit_tanh(theta_m), unit_tanh(theta_p)
                xs = (1 - m) * x + m * p
                yk = torch.full((len(x),), k, dtype=torch.long, device=device)
                with autocast(self.amp, device):
                    out = net(xs).float()
                reg = m.abs().sum()
                loss = F.cross_entropy(out, yk) + cost * reg
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                accs.append(float((out.argmax(1) == k).float().mean()))
                regs.append(float(reg.detach()))
            asr, reg_mean = sum(accs) / len(accs), sum(regs) / len(regs)
            with torch.no_grad():
                last = (unit_tanh(theta_m)[0].cpu(), unit_tanh(theta_p)[0].cpu(), reg_mean, asr)
            ok = asr >= self.success_threshold
            if ok and reg_mean < best_reg:
                best, best_reg = last, reg_mean
            if self.early_stop:
                if best_reg < float("inf"):
                    stop_count = stop_count + 1 if best_reg >= self.early_stop_threshold * stop_best else 0
                stop_best = min(stop_best, best_reg)
                if went_up and went_down and stop_count >= self.early_stop_patience:
                    break
            if cost == 0 and ok:
                set_count += 1
                if set_count >= self.patience:
                    cost, up, down, went_up, went_down = self.init_cost, 0, 0, False, False
            else:
                set_count = 0
            up, down = (up + 1, 0) if ok else (0, down + 1)
            if up >= self.patience:
                cost, up, went_up = cost * self.cost_up, 0, True
            elif down >= self.patience:
                cost, down, went_down = cost / self.cost_down, 0, True
        chosen = best if best is not None else last
        assert chosen is not None
        return {"mask": chosen[0], "pattern": chosen[1], "norm": chosen[2], "asr": chosen[3],
                "reached": best is not None, "final_cost": cost, "epochs": epochs}

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
        flag_at = self.default_threshold if self.threshold is None else float(self.threshold)
        with timer.phase("decision"):
            idx = anomaly_indices(norms)
            target = int(norms.argmin())
            # Attack success of the suspected target's reversed trigger on the held-out evaluation images.
            m, p = masks[target].to(device), patterns[target].to(device)
            hits = n = 0
            with torch.no_grad(), autocast(self.amp, device):
                for x, y in evl.batches(self.batch_size * 2, device):
                    x = x[y != target]
                    if len(x) == 0:
                        continue
                    hits += int((net((1 - m) * x + m * p).argmax(1) == target).sum())
                    n += len(x)
        stats = {
            "norms": norms, "anomaly_indices": idx,
            "flagged_classes": [i for i in range(k) if float(idx[i]) >= flag_at], "flag_threshold": flag_at,
            "asr_opt": [r["asr"] for r in results], "target_asr_eval": hits / max(1, n),
            "reached": [r["reached"] for r in results], "final_cost": [r["final_cost"] for r in results],
            "epochs_run": [r["epochs"] for r in results],
            "median_norm": float(norms.median()),
        }
        score = float(idx[target])
        return Evidence(score=score, target=target, stats=stats,
                        artifacts={"masks": masks, "patterns": patterns, "triggers": masks * patterns,
                                   "norms": norms.float()})
