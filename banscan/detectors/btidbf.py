"""BTI-DBF: backdoor trigger inversion via decoupling benign features (Xu et al., ICLR 2024).

Paper: https://openreview.net/forum?id=Tw9wemV6cb. Official code: github.com/xuxiong0214/BTIDBF (``pretrain.py``,
``btidbf.py``, ``models/unet_model.py``, ``models/mask.py``, ``evaluate.py``, ``cfg.py``; read at ``e680dda``).

Three phases, all on the optimisation part of the defender's clean data (the official code uses 5% of
CIFAR-10's training set, 2,500 images, hence ``n_opt=2500``), each "epoch" one shuffled, augmented pass:

1. **Generator pre-training** (per model, ``n_pretrain_epochs=50``, classifier in eval mode): the official UNet
   ``G`` (32 filters, 4 levels) is trained, in the model's normalised input space, to reproduce its input as the
   classifier sees it: ``CE(softmax(f(x)), softmax(f(G(x)))) + MSE(h(x), h(G(x))) + w * MSE(x, G(x))`` with
   ``w = 100`` while the input MSE is above 0.1 and ``0.01`` below (the official loss, including its
   cross-entropy taken over softmax outputs).
2. **Benign-feature mask** (``n_mask_epochs=20``, Adam lr 0.01): ``m = tanh(theta) / (2 + 1e-7) + 0.5`` (the
   official epsilon) on the feature map ``h(x)`` minimises ``CE(g(m * h(x)), y) - CE(g((1 - m) * h(x)), y)``.
   As in the official code the classifier runs in **train mode** here (BatchNorm uses batch statistics and
   updates its running statistics), on a private copy: the caller's model is never touched. The later phases
   and the decision use that copy, as the official script goes on with the same classifier object.
3. **Backdoor generator** (``n_gen_epochs=30``, Adam lr 1e-3, starting from the pre-trained ``G``, classifier
   in eval mode): per batch, if ``MSE(x, G(x)) > norm_bound`` (0.3) or the benign-feature MSE
   ``MSE(m h(x), m h(G(x))) > feat_bound`` (3), the loss is the input MSE (pull back into the bounds);
   otherwise it is ``-MSE((1-m) h(x), (1-m) h(G(x))) + 0.01 * MSE(m h(x), m h(G(x)))``.

**Decision** (the official code has none; it prints the argmax of a histogram): each evaluation image, with
``N(0, 0.03^2)`` noise in normalised space as in the official ``get_target_label``, goes through the final
generator; the score is the share of these generated inputs predicted as the most frequent class, the target
its argmax. The two bounds are measured again on these images and recorded in ``stats["bounds"]`` with whether
each held: ``feat_bound=3`` is an absolute MSE tuned for the full-width ResNet-18 (512 channels), so on other
models it may be far too loose or too tight; ``stats["bounds"]["clean_feat_mean_square"]`` gives the scale.

**Budget.** ``budget`` scales the three epoch counts (rounded, at least 1 where the count is not 0) and
``batches_per_epoch`` caps the batches of each epoch, so an equal-cost run is one ``--param`` away
(e.g. ``--param budget=0.1``); the counts used are in ``stats["epochs_used"]``.

``BTI-DBF*`` (``star=True``) is *our reading* of the variant the BAN paper evaluates, not a published
specification: we add BAN's term ``mask_lambda * |m|_1 / sg(|m|_1)`` to the mask loss.

Remaining departures from the official code (the rest follows the official code as we read it):

* decision images are the disjoint evaluation part, without augmentation; the official code scores the
  augmented optimisation images themselves;
* the pre-trained generator is the one after the last pre-training epoch; the official script saves it every
  10 epochs, so with a pre-training count that is not a multiple of 10 it would use an earlier one (the same
  at the official 50);
* features of clean images and the mask phase's features are computed without gradients (same values; the
  official code builds graphs it never uses);
* the generator's initial weights, the mask's initial value, the batches, the augmentation and the decision
  noise are all drawn from the detector's seeded generator (the official code uses the global RNG);
* augmentation: a random crop with 1/8-size zero padding and a horizontal flip applied to tensors in ``[0, 1]``
  (the official torchvision transforms do the same on PIL images);
* optional bfloat16 autocast (``amp``, off by default) and channels-last memory format.
"""

from __future__ import annotations

import contextlib
import copy
import logging

import torch
import torch.nn.functional as F

from .._utils import BanscanError, PhaseTimer, progress
from ..data import ImageData
from ..models import SplitModel
from ..train import autocast
from . import register_detector
from ._base import Detector, Evidence, class_hist
from ._inversion import BatchStream, Normalizer, UNet, private_copy, seeded_unet, unit_tanh

log = logging.getLogger(__name__)


@register_detector("btidbf")
class BTIDBF(Detector):
    """Backdoor trigger inversion with a benign-feature mask and a UNet trigger generator.

    Args:
        n_pretrain_epochs: generator pre-training epochs (official ``preround=50``).
        n_mask_epochs: feature-mask epochs (official ``mround=20``).
        n_gen_epochs: backdoor-generator epochs (official ``uround=30``).
        gen_lr: Adam learning rate of the generator (official 1e-3).
        mask_lr: Adam learning rate of the mask (official 0.01).
        norm_bound: bound on the input-space MSE (normalised space) of generated images (official 0.3).
        feat_bound: bound on the benign-feature MSE (official 3 at HEAD; 5 in an earlier commit).
        star: BTI-DBF*, our reading of the BAN paper's variant (not a published spec): add BAN's L1 term.
        mask_lambda: weight of that L1 term (BAN's README value 0.75); unused unless ``star``.
        unet_filters, unet_blocks: generator size (official 32 and 4).
        residual: generator ``x + UNet(x)`` starting at the identity (not official; for short runs and tests).
        input_noise: std of the Gaussian noise added (normalised space) before the generator at decision time.
        augment: random crop and flip on optimisation batches, as the official loader does.
        budget: factor on the three epoch counts (rounded; a nonzero count stays >= 1), for equal-cost runs.
        batches_per_epoch: at most this many batches per epoch (None: one full pass, as the official loader).
        seed, threshold, n_opt, n_eval, batch_size, split_layer: see :class:`~banscan.detectors.Detector`.
        amp: bfloat16 autocast for forward passes (None: the project's rule, :func:`banscan.train.amp_enabled`).

    Shape:
        The model takes ``(N, C, H, W)`` images in ``[0, 1]``; artifacts ``mask`` has the feature shape,
        ``trigger_examples`` is ``(8, C, H, W)`` generated images in ``[0, 1]`` and ``clean_examples`` their sources.

    Example:
        >>> from banscan import create_model, ImageData
        >>> from banscan.detectors import BTIDBF
        >>> import torch
        >>> data = ImageData(torch.randint(0, 255, (64, 3, 16, 16), dtype=torch.uint8), torch.arange(64) % 4)
        >>> det = BTIDBF(n_opt=32, n_pretrain_epochs=1, n_mask_epochs=1, n_gen_epochs=1, unet_filters=4)
        >>> det.detect(create_model("resnet18", 4, base_width=4), data).verdict in ("clean", "backdoored")
        True

    References:
        Xu et al., "Towards Reliable and Efficient Backdoor Trigger Inversion via Decoupling Benign Features",
        ICLR 2024.
    """

    name = "btidbf"
    # Provenance: the official code prints only the argmax; the one published rule for this statistic is BTI-DBF's
    # "more than half of the predictions in one class" (> 5,000 of 10,000, SCAR App. C.1; docs/ban-method.md 2.d).
    default_threshold = 0.5
    threshold_source = "default: majority rule (share > 0.5 on one class, BTI-DBF convention); calibrate on clean models"

    def __init__(self, *, n_pretrain_epochs: int = 50, n_mask_epochs: int = 20, n_gen_epochs: int = 30,
                 gen_lr: float = 1e-3, mask_lr: float = 0.01, norm_bound: float = 0.3, feat_bound: float = 3.0,
                 star: bool = False, mask_lambda: float = 0.75, unet_filters: int = 32, unet_blocks: int = 4,
                 residual: bool = False, input_noise: float = 0.03, augment: bool = True, budget: float = 1.0,
                 batches_per_epoch: int | None = None, seed: int = 0, threshold: float | None = None,
                 n_opt: int = 2500, n_eval: int = 5000, batch_size: int = 128, split_layer: str | None = None,
                 amp: bool | None = False) -> None:
        self.n_pretrain_epochs = n_pretrain_epochs
        self.n_mask_epochs = n_mask_epochs
        self.n_gen_epochs = n_gen_epochs
        self.gen_lr = gen_lr
        self.mask_lr = mask_lr
        self.norm_bound = norm_bound
        self.feat_bound = feat_bound
        self.star = star
        self.mask_lambda = mask_lambda
        self.unet_filters = unet_filters
        self.unet_blocks = unet_blocks
        self.residual = residual
        self.input_noise = input_noise
        self.augment = augment
        self.budget = budget
        self.batches_per_epoch = batches_per_epoch
        self.seed = seed
        self.threshold = threshold
        self.n_opt = n_opt
        self.n_eval = n_eval
        self.batch_size = batch_size
        self.split_layer = split_layer
        self.amp = amp

    def _validate(self) -> None:
        counts = {"n_pretrain_epochs": self.n_pretrain_epochs, "n_mask_epochs": self.n_mask_epochs,
                  "n_gen_epochs": self.n_gen_epochs}
        bad = {k: v for k, v in counts.items() if not isinstance(v, int) or v < 0}
        if bad:
            raise BanscanError(f"epoch counts must be integers >= 0, got {bad}")
        pos = {"gen_lr": self.gen_lr, "mask_lr": self.mask_lr, "norm_bound": self.norm_bound,
               "feat_bound": self.feat_bound}
        bad = {k: v for k, v in pos.items() if not v > 0}
        if bad:
            raise BanscanError(f"these BTI-DBF parameters must be > 0: {bad}")
        if self.mask_lambda < 0 or self.input_noise < 0:
            raise BanscanError(f"mask_lambda and input_noise must be >= 0, got {self.mask_lambda}, {self.input_noise}")
        if self.unet_filters < 1 or self.unet_blocks < 1 or self.batch_size < 2:
            raise BanscanError(f"need unet_filters >= 1, unet_blocks >= 1, batch_size >= 2; got {self!r}")
        if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)) or not self.budget > 0:
            raise BanscanError(f"budget must be a number > 0, got {self.budget!r}")
        bpe = self.batches_per_epoch
        if bpe is not None and (isinstance(bpe, bool) or not isinstance(bpe, int) or bpe < 1):
            raise BanscanError(f"batches_per_epoch must be None or an integer >= 1, got {bpe!r}")

    def epochs_used(self) -> dict[str, int]:
        """The three epoch counts after ``budget`` scaling."""
        def scaled(n: int) -> int:
            return 0 if n == 0 else max(1, int(round(n * self.budget)))
        return {"pretrain": scaled(self.n_pretrain_epochs), "mask": scaled(self.n_mask_epochs),
                "generator": scaled(self.n_gen_epochs)}

    def _stream(self, opt: ImageData, gen: torch.Generator, device: torch.device) -> BatchStream:
        return BatchStream(opt, self.batch_size, device, gen, self.augment)

    # ---------------------------------------------------------------- phases
    def pretrain_generator(self, net: SplitModel, gen_net: UNet, opt: ImageData, gen: torch.Generator,
                           device: torch.device) -> list[float]:
        """Train ``gen_net`` to reproduce clean images as the classifier sees them; returns epoch losses."""
        nz = Normalizer(net)
        optim = torch.optim.Adam(gen_net.parameters(), lr=self.gen_lr)
        gen_net.train()
        losses = []
        stream = self._stream(opt, gen, device)
        for _ in progress(range(self.epochs_used()["pretrain"]), "btidbf pretrain"):
            tot = 0.0
            batches = stream.epoch(self.batches_per_epoch)
            for x, _ in batches:
                xn = nz.norm(x)
                with autocast(self.amp, device):
                    with torch.no_grad():
                        z_c = net.features(x)
                        out_c = net.head(z_c)
                    gn = gen_net(xn)
                    z_g = net.features(nz.denorm(gn.float()))
                    out_g = net.head(z_g)
                # Official: cross-entropy with softmax(clean logits) as the input and softmax(generated) as target.
                p_c, p_g = out_c.float().softmax(1), out_g.float().softmax(1)
                l_pred = -(p_g * F.log_softmax(p_c, 1)).sum(1).mean()
                l_feat = F.mse_loss(z_g.float(), z_c.float())
                l_norm = F.mse_loss(gn.float(), xn)
                loss = l_pred + l_feat + (100.0 if float(l_norm.detach()) > 0.1 else 0.01) * l_norm
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                tot += float(loss.detach())
            losses.append(tot / max(1, len(batches)))
        return losses

    def fit_mask(self, net: SplitModel, opt: ImageData, gen: torch.Generator, device: torch.device
                 ) -> tuple[torch.Tensor, list[float]]:
        """Fit the benign-feature mask ``m = tanh(theta)/(2 + 1e-7) + 0.5``; returns ``m`` and epoch losses.

        ``net`` runs in train mode, as in the official code, so its BatchNorm running statistics change: pass a
        private copy (:meth:`invert` does). It is left in eval mode afterwards.
        """
        x0, _ = next(opt.batches(2, device))
        with torch.no_grad():
            fshape = net.features(x0).shape[1:]
        theta = torch.randn(fshape, generator=gen).to(device).requires_grad_(True)
        optim = torch.optim.Adam([theta], lr=self.mask_lr)
        losses = []
        stream = self._stream(opt, gen, device)
        net.train()
        try:
            for _ in progress(range(self.epochs_used()["mask"]), "btidbf mask"):
                tot, batches = 0.0, stream.epoch(self.batches_per_epoch)
                for x, y in batches:
                    with torch.no_grad(), autocast(self.amp, device):
                        z = net.features(x).float()
                    m = unit_tanh(theta)
                    loss = F.cross_entropy(net.head(m * z), y) - F.cross_entropy(net.head((1 - m) * z), y)
                    if self.star:
                        norm = m.abs().sum()
                        loss = loss + self.mask_lambda * norm / norm.detach()
                    optim.zero_grad(set_to_none=True)
                    loss.backward()
                    optim.step()
                    tot += float(loss.detach())
                losses.append(tot / max(1, len(batches)))
        finally:
            net.eval()
        return unit_tanh(theta).detach(), losses

    def train_backdoor_generator(self, net: SplitModel, gen_net: UNet, mask: torch.Tensor, opt: ImageData,
                                 gen: torch.Generator, device: torch.device) -> dict[str, list[float]]:
        """Push the non-benign features of generated images away within the norm/feature bounds."""
        nz = Normalizer(net)
        optim = torch.optim.Adam(gen_net.parameters(), lr=self.gen_lr)
        gen_net.train()
        hist: dict[str, list[float]] = {"backdoor_feat": [], "benign_feat": [], "norm": [], "bounded_share": []}
        stream = self._stream(opt, gen, device)
        net.eval()
        for _ in progress(range(self.epochs_used()["generator"]), "btidbf generator"):
            sums = {k: 0.0 for k in hist}
            batches = stream.epoch(self.batches_per_epoch)
            for x, _ in batches:
                xn = nz.norm(x)
                with autocast(self.amp, device):
                    with torch.no_grad():
                        z_c = net.features(x).float()
                    gn = gen_net(xn).float()
                    z_g = net.features(nz.denorm(gn)).float()
                l_benign = F.mse_loss(mask * z_g, mask * z_c)
                l_backdoor = F.mse_loss((1 - mask) * z_g, (1 - mask) * z_c)
                l_norm = F.mse_loss(gn, xn)
                out_of_bounds = float(l_norm.detach()) > self.norm_bound or float(l_benign.detach()) > self.feat_bound
                loss = l_norm if out_of_bounds else -l_backdoor + 0.01 * l_benign
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                sums["backdoor_feat"] += float(l_backdoor.detach())
                sums["benign_feat"] += float(l_benign.detach())
                sums["norm"] += float(l_norm.detach())
                sums["bounded_share"] += float(out_of_bounds)
            for k in hist:
                hist[k].append(sums[k] / max(1, len(batches)))
        return hist

    @torch.no_grad()
    def generate(self, net: SplitModel, gen_net: UNet, x01: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Trigger-inverted images in ``[0, 1]`` space (not clipped, as in the official code)."""
        nz = Normalizer(net)
        xn = nz.norm(x01)
        if self.input_noise > 0:
            xn = xn + self.input_noise * torch.randn(xn.shape, generator=gen).to(xn.device)
        gen_net.eval()
        return nz.denorm(gen_net(xn).float())

    def invert(self, net: SplitModel, gen_net: UNet, opt: ImageData, gen: torch.Generator, device: torch.device,
               timer: PhaseTimer | None = None) -> tuple[SplitModel, torch.Tensor, UNet, dict[str, list[float]]]:
        """Phases 2 and 3 from a pre-trained ``gen_net``, as the official code runs them: the mask on a private
        copy of ``net`` in train mode, then a copy of the generator trained against that same copy in eval mode.
        ``net`` and ``gen_net`` are not modified. Returns the copy, the mask, the generator and its history
        (``mask_loss`` included); ``timer`` times the phases as ``mask`` and ``generator``."""
        def phase(name: str):
            return timer.phase(name) if timer is not None else contextlib.nullcontext()

        inv = private_copy(net)
        with phase("mask"):
            mask, mask_losses = self.fit_mask(inv, opt, gen, device)
        with phase("generator"):
            bd_net = copy.deepcopy(gen_net)
            hist = self.train_backdoor_generator(inv, bd_net, mask, opt, gen, device)
        return inv, mask, bd_net, {**hist, "mask_loss": mask_losses}

    def bounds(self, net: SplitModel, mask: torch.Tensor, x01: torch.Tensor, xg01: torch.Tensor
               ) -> dict[str, float]:
        """Per-batch sums over images of each image's input MSE (normalised space) and benign-feature MSE between
        clean and generated images, and of the clean features' mean square (the scale against which the absolute
        ``feat_bound`` is to be read); divided by the image count they are the means the bounds apply to."""
        nz = Normalizer(net)
        with torch.no_grad():
            z_c, z_g = net.features(x01).float(), net.features(xg01).float()
            d_in = (nz.norm(xg01.float()) - nz.norm(x01)).pow(2).flatten(1).mean(1)
            d_feat = (mask * z_g - mask * z_c).pow(2).flatten(1).mean(1)
            ms = z_c.pow(2).flatten(1).mean(1)
        return {"norm": float(d_in.sum()), "feat": float(d_feat.sum()), "clean_ms": float(ms.sum())}

    # ---------------------------------------------------------------- main
    def _detect(self, net: SplitModel, opt: ImageData, evl: ImageData, timer: PhaseTimer,
                gen: torch.Generator, device: torch.device) -> Evidence:
        self._validate()
        if len(opt) < 2:
            raise BanscanError(f"BTI-DBF needs at least 2 optimisation images (n_opt), got {len(opt)}")
        channels = opt.x.shape[1]
        gen_net = seeded_unet(gen, channels, self.unet_filters, self.unet_blocks, device, self.residual)
        with timer.phase("pretrain"):
            pre_losses = self.pretrain_generator(net, gen_net, opt, gen, device)
        inv, mask, bd_net, hist_gen = self.invert(net, gen_net, opt, gen, device, timer)
        with timer.phase("decision"):
            preds_clean, preds_gen, ys = [], [], []
            sums = {"norm": 0.0, "feat": 0.0, "clean_ms": 0.0}
            examples = None
            with autocast(self.amp, device):
                for x, y in evl.batches(self.batch_size * 2, device):
                    xg = self.generate(inv, bd_net, x, gen)
                    with torch.no_grad():
                        preds_clean.append(inv(x).argmax(1))
                        preds_gen.append(inv(xg).argmax(1))
                    for key, v in self.bounds(inv, mask, x, xg).items():
                        sums[key] += v
                    ys.append(y)
                    if examples is None:
                        examples = (x[:8].cpu(), xg[:8].float().cpu())
        pred_clean, pred_gen, y_ev = torch.cat(preds_clean), torch.cat(preds_gen), torch.cat(ys)
        k = net.num_classes
        h_clean, h_gen = class_hist(pred_clean, k), class_hist(pred_gen, k)
        n = len(y_ev)
        target = int(h_gen.argmax())
        norm_mse, feat_mse = sums["norm"] / n, sums["feat"] / n
        bounds = {
            "norm_mse": norm_mse, "norm_bound": self.norm_bound, "norm_bound_held": norm_mse <= self.norm_bound,
            "benign_feat_mse": feat_mse, "feat_bound": self.feat_bound,
            "feat_bound_held": feat_mse <= self.feat_bound, "clean_feat_mean_square": sums["clean_ms"] / n,
            "where": "evaluation images with the decision noise; generated vs clean; normalised input space",
        }
        if not (bounds["norm_bound_held"] and bounds["feat_bound_held"]):
            log.warning("btidbf: a bound did not hold at decision time (input MSE %.4g vs %.4g, benign-feature MSE "
                        "%.4g vs %.4g)", norm_mse, self.norm_bound, feat_mse, self.feat_bound)
        last = {key: (v[-1] if v else None) for key, v in hist_gen.items()}
        stats = {
            "variant": "btidbf*" if self.star else "btidbf",
            "hist_generated": h_gen, "hist_clean": h_clean,
            "share_clean": float(h_clean.max()) / n,
            "acc_clean": float((pred_clean == y_ev).float().mean()),
            "acc_generated": float((pred_gen == y_ev).float().mean()),
            "bounds": bounds,
            "epochs_used": self.epochs_used(),
            "mask_mean": float(mask.mean()),
            "pretrain_loss_last": pre_losses[-1] if pre_losses else None,
            "mask_loss_last": last["mask_loss"],
            "gen_backdoor_feat_last": last["backdoor_feat"],
            "gen_benign_feat_last": last["benign_feat"],
            "gen_norm_last": last["norm"],
            "gen_out_of_bounds_share": (sum(hist_gen["bounded_share"]) / len(hist_gen["bounded_share"])
                                        if hist_gen["bounded_share"] else None),
            "n_eval": n,
        }
        artifacts = {"mask": mask.cpu()}
        if examples is not None:
            artifacts["clean_examples"] = examples[0].contiguous()
            artifacts["trigger_examples"] = examples[1].contiguous()
        return Evidence(score=float(h_gen.max()) / n, target=target, stats=stats, artifacts=artifacts)
