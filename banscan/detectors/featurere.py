"""FeatureRE: feature-space backdoor trigger inversion (Wang et al., NeurIPS 2022).

Paper: https://arxiv.org/abs/2210.15127. Official code: github.com/RU-System-Software-and-Security/FeatureRE.

Backdoor features live in a small region of feature space that is (nearly) constant across inputs. For each
candidate target ``t`` (all classes by default), on the optimisation images not labelled ``t``:

* an input-space transform ``G`` (a UNet, in the model's normalised space) and a feature mask
  ``m = tanh(theta) / (2 + 1e-7) + 0.5`` (initialised near 0.88) are fitted so that the head, fed
  ``m * h(G(x)) + (1 - m) * h(x_ref)`` (``x_ref``: random clean optimisation images), predicts ``t``;
* ``G`` is constrained by: the input distance ``MSE(G(x), x) <= p_bound`` (0.15); the spread of the masked
  features ``sum(std_batch(m * h(G(x)))) / |m|_1 <= std_bound`` (1, the "constant trigger feature" constraint);
  and the cosine similarity between the mean of ``h(G(x))`` and the mean feature of class ``t``, which is
  minimised (a backdoor reaches ``t`` through features unlike ``t``'s benign ones); violated constraints enter
  the loss with adaptive weights, the cross-entropy only while the batch attack success is below 0.9;
* the mask minimises the cross-entropy plus ``|m|_1`` while ``|m|_1 > mask_size * numel`` (3%);
* ``n_warmup_epochs`` (100) train ``G`` alone on cross-entropy and the input bound, then ``n_epochs`` (400)
  alternate one ``G`` step and one mask step per batch.

**Decision statistic** (the official one): per target, the epoch-mean "mixed value"
``cos_dist - ASR + relu(p - p_bound)/p_bound + relu(|m|_1 - mask_bound)/mask_bound + relu(std - std_bound)/std_bound``,
minimised over epochs; the official rule flags the model when the smallest mixed value over targets is below
-0.75. Our score is its negation (higher = more suspicious), threshold 0.75, target the argmin class.

Cost: ``K * (n_warmup_epochs + n_epochs)`` passes over the optimisation images, each step a UNet and a
classifier forward/backward; the official defaults (500 epochs per class) are kept but every count is a
parameter, and ``targets`` restricts the candidate classes.
Departures: the generator's weights, the batches and the reference features are seeded; batches are not
augmented (the official detection loader uses test transforms).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .._utils import BanscanError, PhaseTimer, progress
from ..data import ImageData
from ..models import SplitModel
from . import register_detector
from ._base import Detector, Evidence
from ..train import train_batches
from ._inversion import Normalizer, autocast, clean_features, seeded_unet, transfer_asr, unit_tanh

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _InversionState:
    """What one target's inversion carries from batch to batch: the models, the optimisers, the adaptive
    constraint weights and the best epoch so far."""

    net: SplitModel
    ae: torch.nn.Module
    theta: torch.Tensor
    t: int
    class_mean: torch.Tensor
    ref_feats: torch.Tensor
    gen: torch.Generator
    device: torch.device
    mask_bound: float
    opt_g: torch.optim.Optimizer | None = None
    opt_m: torch.optim.Optimizer | None = None
    w_p: float = 1.0
    w_acc: float = 1.0
    w_std: float = 1.0
    best: float = float("inf")
    best_terms: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.nz = Normalizer(self.net)

    def mask(self) -> torch.Tensor:
        return unit_tanh(self.theta)

    def target(self, n: int) -> torch.Tensor:
        return torch.full((n,), self.t, dtype=torch.long, device=self.device)

    def mixed_logits(self, z: torch.Tensor) -> torch.Tensor:
        """The head on the masked features of ``z`` completed by random clean reference features."""
        idx = torch.randint(0, len(self.ref_feats), (len(z),), generator=self.gen).to(self.device)
        m = self.mask()
        return self.net.head(m * z + (1 - m) * self.ref_feats[idx])


@register_detector("featurere")
class FeatureRE(Detector):
    """Feature-space trigger inversion per candidate target with the official mixed-value statistic.

    Args:
        n_warmup_epochs: epochs training the transform alone (official 100).
        n_epochs: epochs of joint transform/mask training (official 400).
        lr: Adam learning rate of the transform (official 1e-3, betas (0.5, 0.9)).
        mask_lr: Adam learning rate of the feature mask (official 0.1).
        mask_size: mask L1 bound as a share of the feature size (official 0.03).
        p_bound: input-space MSE bound, normalised space (official ``p_loss_bound`` 0.15).
        std_bound: bound on the masked-feature spread (official ``loss_std_bound`` 1).
        asr_threshold: attack success above which the cross-entropy term is dropped (official 0.9).
        unet_filters, unet_blocks: transform size (official 32 and 4).
        residual: transform ``x + UNet(x)`` starting at the identity (not official; for short runs and tests).
        targets: candidate target classes (``None``: all, as the official ``--set_all2one_target all``).
        seed, threshold, n_opt, n_eval, batch_size, split_layer: see :class:`~banscan.detectors.Detector`.
        amp: bfloat16 autocast for forward passes.

    Shape:
        Artifacts: ``masks`` ``(T, *feature_shape)`` per candidate, ``trigger_examples`` ``(8, C, H, W)``
        transformed evaluation images for the suspected target, ``clean_examples`` their sources.

    Example:
        >>> from banscan import create_model, ImageData
        >>> from banscan.detectors import FeatureRE
        >>> import torch
        >>> data = ImageData(torch.randint(0, 255, (64, 3, 16, 16), dtype=torch.uint8), torch.arange(64) % 4)
        >>> det = FeatureRE(n_opt=32, n_warmup_epochs=1, n_epochs=1, unet_filters=4, unet_blocks=2)
        >>> det.detect(create_model("resnet18", 4, base_width=4), data).verdict in ("clean", "backdoored")
        True

    References:
        Wang et al., "Rethinking the Reverse-engineering of Backdoor Attacks via Feature Space", NeurIPS 2022.
    """

    name = "featurere"
    default_threshold = 0.75
    threshold_source = "default: official mixed_value_threshold -0.75 (score = -min mixed value)"

    def __init__(self, *, n_warmup_epochs: int = 100, n_epochs: int = 400, lr: float = 1e-3, mask_lr: float = 0.1,
                 mask_size: float = 0.03, p_bound: float = 0.15, std_bound: float = 1.0, asr_threshold: float = 0.9,
                 unet_filters: int = 32, unet_blocks: int = 4, residual: bool = False,
                 targets: Sequence[int] | None = None, seed: int = 0, threshold: float | None = None,
                 n_opt: int = 2500, n_eval: int = 5000, batch_size: int = 256, split_layer: str | None = None,
                 amp: bool = False) -> None:
        self.n_warmup_epochs = n_warmup_epochs
        self.n_epochs = n_epochs
        self.lr = lr
        self.mask_lr = mask_lr
        self.mask_size = mask_size
        self.p_bound = p_bound
        self.std_bound = std_bound
        self.asr_threshold = asr_threshold
        self.unet_filters = unet_filters
        self.unet_blocks = unet_blocks
        self.residual = residual
        self.targets = None if targets is None else [int(t) for t in targets]
        self.seed = seed
        self.threshold = threshold
        self.n_opt = n_opt
        self.n_eval = n_eval
        self.batch_size = batch_size
        self.split_layer = split_layer
        self.amp = amp

    def _validate(self, k: int) -> list[int]:
        if not isinstance(self.n_warmup_epochs, int) or self.n_warmup_epochs < 0 or not isinstance(
                self.n_epochs, int) or self.n_epochs < 1:
            raise BanscanError(f"need n_warmup_epochs >= 0 and n_epochs >= 1, got {self.n_warmup_epochs}, "
                               f"{self.n_epochs}")
        pos = {"lr": self.lr, "mask_lr": self.mask_lr, "mask_size": self.mask_size, "p_bound": self.p_bound,
               "std_bound": self.std_bound, "asr_threshold": self.asr_threshold}
        bad = {n: v for n, v in pos.items() if not v > 0}
        if bad:
            raise BanscanError(f"these FeatureRE parameters must be > 0: {bad}")
        if self.unet_filters < 1 or self.unet_blocks < 1 or self.batch_size < 2:
            raise BanscanError(f"need unet_filters >= 1, unet_blocks >= 1, batch_size >= 2; got {self!r}")
        targets = list(range(k)) if self.targets is None else self.targets
        if not targets or any(t < 0 or t >= k for t in targets):
            raise BanscanError(f"targets must be non-empty class indices in 0..{k - 1}, got {self.targets}")
        return targets

    def invert_target(self, net: SplitModel, data: ImageData, t: int, class_mean: torch.Tensor,
                      ref_feats: torch.Tensor, gen: torch.Generator, device: torch.device) -> dict[str, object]:
        """Fit a transform and a feature mask sending ``data`` (images not of class ``t``) to ``t``."""
        ae = seeded_unet(gen, data.x.shape[1], self.unet_filters, self.unet_blocks, device, self.residual)
        st = _InversionState(net=net, ae=ae, theta=torch.ones(ref_feats.shape[1:], device=device, requires_grad=True),
                             t=t, class_mean=class_mean, ref_feats=ref_feats, gen=gen, device=device,
                             mask_bound=self.mask_size * ref_feats[0].numel())
        st.opt_g = torch.optim.Adam(ae.parameters(), lr=self.lr, betas=(0.5, 0.9))
        st.opt_m = torch.optim.Adam([st.theta], lr=self.mask_lr, betas=(0.5, 0.9))
        for epoch in progress(range(self.n_warmup_epochs + self.n_epochs), f"featurere target {t}"):
            warm = epoch < self.n_warmup_epochs
            sums = {"dist": 0.0, "asr": 0.0, "p": 0.0, "norm": 0.0, "std": 0.0}
            batches = list(train_batches(data, self.batch_size, gen, device, padding=0, flip=False))
            for x, _ in batches:
                terms = self._transform_step(st, x, warm)
                if not warm:
                    terms["norm"] = self._mask_step(st, x)
                for key, v in terms.items():
                    sums[key] += v
            if not warm:
                self._end_epoch(st, {key: v / max(1, len(batches)) for key, v in sums.items()})
        ae.eval()
        return {"mixed": st.best, "terms": st.best_terms, "mask": st.mask().detach().cpu(), "ae": ae}

    def _transform_step(self, st: _InversionState, x: torch.Tensor, warm: bool) -> dict[str, float]:
        """One Adam step of the transform on batch ``x`` (the mask fixed); returns the batch's terms."""
        st.ae.train()
        st.theta.requires_grad_(False)
        xn = st.nz.norm(x)
        with autocast(self.amp, st.device):
            gn = st.ae(xn).float()
            z = st.net.features(st.nz.denorm(gn)).float()
            logits = (st.net.head(z) if warm else st.mixed_logits(z)).float()
        ce = F.cross_entropy(logits, st.target(len(x)))
        p_loss = F.mse_loss(gn, xn)
        dist = F.cosine_similarity(st.class_mean.flatten(), z.mean(0).flatten(), dim=0)
        asr = float((logits.argmax(1) == st.t).float().mean())
        terms = {"dist": float(dist.detach()), "asr": asr, "p": float(p_loss.detach())}
        if warm:
            loss = ce + (100 * p_loss if terms["p"] > self.p_bound else 0)
        else:
            m = st.mask()
            std = (z * m).std(0).sum() / m.abs().sum()
            terms["std"] = float(std.detach())
            loss = 5 * dist.clamp_min(0)
            if terms["std"] > self.std_bound:
                loss = loss + std * 10 * (1 + st.w_std)
            if terms["p"] > self.p_bound:
                loss = loss + p_loss * 10 * (1 + st.w_p)
            if asr < self.asr_threshold:
                loss = loss + ce * (1 + st.w_acc)
        st.opt_g.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
            st.opt_g.step()
        return terms

    def _mask_step(self, st: _InversionState, x: torch.Tensor) -> float:
        """One Adam step of the feature mask on batch ``x`` (the transform fixed); returns ``|m|_1`` before it."""
        st.ae.eval()
        st.theta.requires_grad_(True)
        with torch.no_grad(), autocast(self.amp, st.device):
            z_m = st.net.features(st.nz.denorm(st.ae(st.nz.norm(x)).float())).float()
        with autocast(self.amp, st.device):
            lm = F.cross_entropy(st.mixed_logits(z_m).float(), st.target(len(x)))
        norm = st.mask().abs().sum()
        if float(norm.detach()) > st.mask_bound:
            lm = lm + norm
        st.opt_m.zero_grad(set_to_none=True)
        lm.backward()
        st.opt_m.step()
        return float(norm.detach())

    def _end_epoch(self, st: _InversionState, av: dict[str, float]) -> None:
        """The epoch's mixed value (kept if the smallest so far) and the next epoch's adaptive weights."""
        mixed = (av["dist"] - av["asr"] + max(av["p"] - self.p_bound, 0) / self.p_bound
                 + max(av["norm"] - st.mask_bound, 0) / st.mask_bound
                 + max(av["std"] - self.std_bound, 0) / self.std_bound)
        if mixed < st.best:
            st.best, st.best_terms = mixed, av
        st.w_p = max(av["p"] - self.p_bound, 0) / self.p_bound
        st.w_acc = max(self.asr_threshold - av["asr"], 0) / self.asr_threshold
        st.w_std = max(av["std"] - self.std_bound, 0) / self.std_bound

    def _detect(self, net: SplitModel, opt: ImageData, evl: ImageData, timer: PhaseTimer,
                gen: torch.Generator, device: torch.device) -> Evidence:
        k = net.num_classes
        targets = self._validate(k)
        with timer.phase("features"):
            feats, y_opt = clean_features(net, opt, self.batch_size, device, self.amp)
        results = {}
        with timer.phase("inversion"):
            for t in targets:
                keep = torch.nonzero(opt.y != t).flatten()
                if len(keep) < 2 or not bool((y_opt == t).any()):
                    raise BanscanError(f"FeatureRE needs optimisation images of class {t} and of other classes; "
                                       f"raise n_opt (now {len(opt)})")
                class_mean = feats[(y_opt == t).to(feats.device)].mean(0)
                results[t] = self.invert_target(net, opt.subset(keep), t, class_mean, feats, gen, device)
        with timer.phase("decision"):
            mixed = {t: r["mixed"] for t, r in results.items()}
            target = min(mixed, key=lambda t: mixed[t])
            ae, nz = results[target]["ae"], Normalizer(net)
            asr, examples = transfer_asr(net, evl, lambda x: nz.denorm(ae(nz.norm(x)).float()), target,
                                         self.batch_size, device, self.amp)
        stats = {
            "mixed_values": {str(t): v for t, v in mixed.items()},
            "terms": {str(t): r["terms"] for t, r in results.items()},
            "transform_asr_eval": asr,
            "candidates": targets,
        }
        artifacts = {"masks": torch.stack([results[t]["mask"] for t in targets])}
        if examples is not None:
            artifacts["clean_examples"] = examples[0].contiguous()
            artifacts["trigger_examples"] = examples[1].contiguous()
        return Evidence(score=-float(mixed[target]), target=int(target), stats=stats, artifacts=artifacts)
