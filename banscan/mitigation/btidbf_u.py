"""BTI-DBF(U): backdoor removal by unlearning inverted triggers (Xu et al., ICLR 2024,
https://openreview.net/forum?id=Tw9wemV6cb; official code github.com/xuxiong0214/BTIDBF).

The trigger generator is the one of the BTI-DBF detector (:class:`banscan.detectors.btidbf.BTIDBF`), used through
its phase methods, which form the generator interface this module relies on:

* ``pretrain_generator(net, unet, data, gen, device)``: train the UNet to reproduce clean images;
* ``fit_mask(net, data, gen, device) -> (mask, losses)``: the benign-feature mask on ``net.features``;
* ``train_backdoor_generator(net, unet, mask, data, gen, device)``: push the non-benign features of ``unet(x)``
  away within the norm and feature bounds;

with ``net`` a :class:`banscan.models.SplitModel` and the UNet working in the model's normalised input space.

Procedure (official defaults): pre-train the generator once (50 epochs); then ``n_rounds`` (5) rounds of: fit the
mask (20 epochs), train the backdoor generator (30 epochs, continuing from the previous round's), and unlearn
for ``n_unlearn_epochs`` (30): in every clean batch a ``poison_share`` (10%) of the images is replaced by its
generated version, kept with its true label, and the model takes an Adam step (lr 1e-4) on the cross-entropy.
As in the official ``reverse()``, each round's mask is fitted on a deep copy of the current model in train
mode (so only the copy's BatchNorm statistics change) and the generator, continuing across rounds, is trained
against that copy in eval mode; the model itself is in train mode only while it unlearns. The model passed
to :meth:`repair` is never modified (the base class repairs a deep copy).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .._utils import BanscanError, PhaseTimer, progress
from ..data import ImageData
from ..models import SplitModel
from ..train import autocast, train_batches
from . import register_mitigation
from ._base import Mitigation, check_positive


@register_mitigation("btidbf_u")
class BTIDBFUnlearn(Mitigation):
    """Unlearn the triggers that BTI-DBF's generator inverts.

    Args:
        n_rounds: generator-then-unlearning rounds (official ``nround=5``).
        n_unlearn_epochs: unlearning epochs per round (official ``ul_round=30``).
        unlearn_lr: Adam learning rate of the model while unlearning (official 1e-4).
        poison_share: share of every unlearning batch replaced by generated images (official 0.1).
        n_pretrain_epochs, n_mask_epochs, n_gen_epochs, gen_lr, mask_lr, norm_bound, feat_bound, unet_filters,
            unet_blocks, residual: the generator's settings, as in :class:`banscan.detectors.btidbf.BTIDBF`.
        split_layer: split point for models without ``forward_features``/``forward_head``.
        augment: random crop and flip on every batch.
        batch_size: images per step.
        amp: bfloat16 autocast for the forward passes (None: :func:`banscan.train.amp_enabled` decides).
        seed: seeds the generator, the batches and the augmentation.

    Example:
        >>> from banscan import create_model
        >>> from banscan.synthetic import make_synthetic
        >>> m = BTIDBFUnlearn(n_rounds=1, n_unlearn_epochs=1, n_pretrain_epochs=1, n_mask_epochs=1, n_gen_epochs=1,
        ...                   unet_filters=4, unet_blocks=2)
        >>> m.repair(create_model("resnet18", 4, base_width=4), make_synthetic(64, 4, 16)).method
        'btidbf_u'
    """

    def __init__(self, *, n_rounds: int = 5, n_unlearn_epochs: int = 30, unlearn_lr: float = 1e-4,
                 poison_share: float = 0.1, n_pretrain_epochs: int = 50, n_mask_epochs: int = 20,
                 n_gen_epochs: int = 30, gen_lr: float = 1e-3, mask_lr: float = 0.01, norm_bound: float = 0.3,
                 feat_bound: float = 3.0, unet_filters: int = 32, unet_blocks: int = 4, residual: bool = False,
                 split_layer: str | None = None, augment: bool = True, batch_size: int = 128, amp: bool | None = False,
                 seed: int = 0) -> None:
        self.n_rounds = n_rounds
        self.n_unlearn_epochs = n_unlearn_epochs
        self.unlearn_lr = unlearn_lr
        self.poison_share = poison_share
        self.n_pretrain_epochs = n_pretrain_epochs
        self.n_mask_epochs = n_mask_epochs
        self.n_gen_epochs = n_gen_epochs
        self.gen_lr = gen_lr
        self.mask_lr = mask_lr
        self.norm_bound = norm_bound
        self.feat_bound = feat_bound
        self.unet_filters = unet_filters
        self.unet_blocks = unet_blocks
        self.residual = residual
        self.split_layer = split_layer
        self.augment = augment
        self.batch_size = batch_size
        self.amp = amp
        self.seed = seed

    def _validate(self) -> None:
        super()._validate()
        check_positive("n_rounds", self.n_rounds, integer=True)
        check_positive("n_unlearn_epochs", self.n_unlearn_epochs, integer=True)
        check_positive("unlearn_lr", self.unlearn_lr)
        if not isinstance(self.poison_share, (int, float)) or not 0 < self.poison_share <= 1:
            raise BanscanError(f"poison_share must be in (0, 1], got {self.poison_share!r}")

    def _generator_owner(self):
        """The BTI-DBF detector whose phase methods train the generator (validated like the detector)."""
        from ..detectors.btidbf import BTIDBF

        det = BTIDBF(n_pretrain_epochs=self.n_pretrain_epochs, n_mask_epochs=self.n_mask_epochs,
                     n_gen_epochs=self.n_gen_epochs, gen_lr=self.gen_lr, mask_lr=self.mask_lr,
                     norm_bound=self.norm_bound, feat_bound=self.feat_bound, unet_filters=self.unet_filters,
                     unet_blocks=self.unet_blocks, residual=self.residual, augment=self.augment,
                     seed=self.seed, batch_size=self.batch_size, split_layer=self.split_layer, amp=self.amp)
        det._validate()
        return det

    def _repair(self, net: SplitModel, data: ImageData, timer: PhaseTimer, gen: torch.Generator,
                device: torch.device) -> dict[str, Any]:
        from ..detectors._inversion import private_copy, seeded_unet

        det = self._generator_owner()
        model = net.model
        split = SplitModel(model, data.mean, data.std, self.split_layer).to(device)
        channels = data.x.shape[1]
        unet = seeded_unet(gen, channels, self.unet_filters, self.unet_blocks, device, self.residual)
        mean, std = split.mean, split.std
        opt = torch.optim.Adam([p for p in model.parameters()], lr=self.unlearn_lr)
        pad = 4 if self.augment else 0
        stats: dict[str, Any] = {"rounds": []}

        model.requires_grad_(False)
        model.eval()
        with timer.phase("pretrain"):
            det.pretrain_generator(split, unet, data, gen, device)
        for r in progress(range(self.n_rounds), "btidbf_u"):
            model.requires_grad_(False)
            model.eval()
            # As the official reverse(): the mask is fitted on a deep copy of the current model in train mode (its
            # BatchNorm statistics change, the repaired model's do not) and the generator is trained against it.
            inv = private_copy(split)
            with timer.phase("mask"):
                mask, _ = det.fit_mask(inv, data, gen, device)
            with timer.phase("generator"):
                hist = det.train_backdoor_generator(inv, unet, mask, data, gen, device)
            del inv
            model.requires_grad_(True)
            model.train()
            unet.eval()
            with timer.phase("unlearn"):
                tot, nb = 0.0, 0
                for _ in range(self.n_unlearn_epochs):
                    for x, y in train_batches(data, self.batch_size, gen, device, pad, bool(self.augment)):
                        k = max(1, int(round(self.poison_share * len(x))))
                        with torch.no_grad():
                            xg = unet((x[:k] - mean) / std).float() * std + mean
                        xb = torch.cat([xg, x[k:]])
                        with autocast(self.amp, device):
                            out = net(xb)
                        loss = F.cross_entropy(out.float(), y)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        tot += float(loss.detach())
                        nb += 1
            stats["rounds"].append({
                "round": r + 1, "unlearn_loss": tot / max(nb, 1), "mask_mean": float(mask.mean()),
                "gen_backdoor_feat_last": hist["backdoor_feat"][-1] if hist["backdoor_feat"] else None,
                "gen_out_of_bounds_share": (sum(hist["bounded_share"]) / len(hist["bounded_share"])
                                            if hist["bounded_share"] else None),
            })
        model.eval()
        return stats
