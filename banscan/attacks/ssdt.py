"""SSDT: source-specific dynamic trigger (the adaptive attack of the BAN paper)."""

from __future__ import annotations

import torch

from .._utils import BanscanError
from . import register_attack
from .iad import IAD


@register_attack("ssdt")
class SSDT(IAD):
    """Source-Specific Dynamic Trigger: an IAD-style generator whose trigger only works on the victim class.

    Reference: the source-specific dynamic-trigger attack used against TED (X. Mo, Y. Zhang, L. Y. Zhang, W. Luo,
    N. Sun, S. Hu, S. Gao, Y. Xiang, "Robust Backdoor Detection for Deep Learning via Topological Evolution
    Dynamics", IEEE S&P 2024) and adopted by the BAN paper (NeurIPS 2024) as its adaptive attack.

    Settings (the BAN code's ``ted`` config): victim class 1, target class 0, ``p_attack`` = 0.1,
    ``p_cross`` = 0.1, ``mask_density`` = 0.032, generators and losses as in :class:`~banscan.attacks.IAD`. In each
    batch, victim-class samples (up to ``poison_rate`` of the batch and at most half of the batch's victim
    samples, so clean victims remain) are triggered and relabelled to the target; as many non-victim samples are
    triggered but keep their labels, which confines the backdoor to the victim class; a fraction ``p_cross``
    receives another image's trigger with its own label. ASR is measured on victim-class test images only.

    Args:
        target: target class.
        victim: source class whose triggered images go to the target.
        poison_rate: upper bound on the fraction of each batch triggered and relabelled.
        p_cross: fraction of each batch given another image's trigger (labels kept).
        mask_density: target mean of the mask.
        lambda_div: weight of the diversity loss.
        lambda_norm: weight of the mask-density loss.
        width: channels of the generators.
        seed: seed of the generators' initial weights.

    Shape:
        images ``(N, C, H, W)`` float in ``[0, 1]``.
    """

    modes = ("all2one",)
    reference = "Mo et al., TED, IEEE S&P 2024 (source-specific dynamic trigger); BAN, NeurIPS 2024"

    # One keyword argument per hyperparameter (the estimator contract, docs/architecture.md): no logic here.
    def __init__(self, *, target: int = 0, victim: int = 1, poison_rate: float = 0.1, p_cross: float = 0.1,
                 mask_density: float = 0.032, lambda_div: float = 1.0, lambda_norm: float = 100.0,
                 width: int = 16, seed: int = 0) -> None:
        self.target = target
        self.victim = victim
        self.poison_rate = poison_rate
        self.p_cross = p_cross
        self.mask_density = mask_density
        self.lambda_div = lambda_div
        self.lambda_norm = lambda_norm
        self.width = width
        self.seed = seed

    def _check_params(self, num_classes: int) -> None:
        super()._check_params(num_classes)
        v = self.victim
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < num_classes or v == self.target:
            raise BanscanError(f"ssdt: victim must be a class index in 0..{num_classes - 1} other than the target "
                               f"{self.target}, got {v!r}")

    def asr_mask(self, y: torch.Tensor) -> torch.Tensor:
        return y == self.victim

    def _roles(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n = len(y)
        victims = torch.nonzero(y == self.victim).flatten()
        others = torch.nonzero(y != self.victim).flatten()
        n_bd = min(int(n * self.poison_rate), len(victims) // 2)
        bd = victims[:n_bd]
        keep = others[:n_bd]
        n_cross = min(int(n * self.p_cross), len(others) - len(keep))
        cross = others[len(keep):len(keep) + n_cross]
        return bd, keep, cross, self.target_labels(y[bd])
