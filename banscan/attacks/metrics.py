"""Attack metrics, measured once for everything that reports them (zoo cards, ``zoo eval``, mitigation records).

* **BA**: clean accuracy on the test images;
* **ASR**: on the test images whose label the trigger changes, the share predicted as ``target_labels(y)``;
* **RA** (robust accuracy): the share of the same triggered images still predicted as their true class;
* **ASR_any**: per class ``c``, triggered images of other classes predicted ``c`` over triggered images of other
  classes; the largest of these, and ``ASR_any_class`` its class. A repair that only moves the backdoor to another
  label keeps it high.

Rates are fractions in ``[0, 1]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._utils import BanscanError, eval_mode, resolve_device
from ..data import ImageData
from ..models import SplitModel

__all__ = ["attack_metrics"]


@torch.no_grad()
def attack_metrics(model: nn.Module, data: ImageData, attack: Any = None, device: str | torch.device | None = None,
                   batch_size: int = 512) -> dict[str, float | int]:
    """``{"BA", "n_test"}`` and, given an attack (``apply(x01, y)``, ``target_labels(y)``), ``ASR``, ``RA``,
    ``ASR_any``, ``ASR_any_class``, ``n_triggered``. The model is left as it was (its train/eval mode included)."""
    dev = resolve_device(device, model)
    net = SplitModel(model, data.mean, data.std).to(dev)
    hit = n = asr_hit = ra_hit = n_trig = 0
    to_class = not_class = None  # per class c: triggered images predicted c / triggered images not of class c
    with eval_mode(net):
        for x, y in data.batches(batch_size, dev):
            hit += int((net(x).argmax(1) == y).sum())
            n += len(y)
            if attack is None:
                continue
            yt = attack.target_labels(y).to(dev)
            keep = y != yt  # images whose label the trigger changes
            if not keep.any():
                continue
            xs, ys, yts = x[keep], y[keep], yt[keep]
            logits = net(attack.apply(xs, ys))
            pred, k = logits.argmax(1), logits.shape[1]
            asr_hit += int((pred == yts).sum())
            ra_hit += int((pred == ys).sum())
            n_trig += len(ys)
            wrong = torch.bincount(pred[pred != ys], minlength=k).cpu()
            others = len(ys) - torch.bincount(ys, minlength=k).cpu()
            to_class = wrong if to_class is None else to_class + wrong
            not_class = others if not_class is None else not_class + others
    out: dict[str, float | int] = {"BA": hit / n if n else float("nan"), "n_test": n}
    if attack is not None:
        if n_trig == 0:
            raise BanscanError("no test image has a label the attack changes (all are of the target class)")
        share = to_class.double() / not_class.clamp(min=1).double()
        out.update(ASR=asr_hit / n_trig, RA=ra_hit / n_trig, ASR_any=float(share.max()),
                   ASR_any_class=int(share.argmax()), n_triggered=n_trig)
    return out
