"""One view of every classifier for the detectors: ``features(x)`` and ``head(z)``.

Models that define ``forward_features``/``forward_head`` (ours, timm's) are used as they are. For any other
model the split is taken at a named layer, by default the input of the last global pooling, by tracing the
model with ``torch.fx`` into two graphs; the model's code is not edited.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import fx, nn

from .._utils import BanscanError

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
_POOL_MODULES = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d)
_POOL_FUNCS = {"adaptive_avg_pool2d", "avg_pool2d", "adaptive_max_pool2d"}


def norm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Normalisation layers with affine parameters (BatchNorm, GroupNorm, LayerNorm, InstanceNorm)."""
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, _NORM_TYPES) and getattr(m, "weight", None) is not None
    ]


def _is_pool(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), _POOL_MODULES)
    if node.op == "call_function":
        return getattr(node.target, "__name__", "") in _POOL_FUNCS
    if node.op == "call_method" and node.target == "mean":
        return True
    return False


def _fx_split(model: nn.Module, layer: str | None) -> tuple[fx.GraphModule, fx.GraphModule]:
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # fx raises many types on dynamic control flow
        raise BanscanError(
            f"{type(model).__name__} has no forward_features/forward_head and cannot be traced by torch.fx "
            f"({type(e).__name__}: {e}); add those two methods to the model"
        ) from None
    nodes = list(gm.graph.nodes)
    if layer is None:
        pools = [n for n in nodes if _is_pool(n, gm)]
        if not pools:
            raise BanscanError(
                f"{type(model).__name__} has no global pooling to split at; name the layer whose input "
                "is the feature map (split_layer / --split-layer)"
            )
        cut = pools[-1]
    else:
        hits = [n for n in nodes if n.op == "call_module" and n.target == layer]
        if not hits:
            names = [str(n.target) for n in nodes if n.op == "call_module"]
            raise BanscanError(f"split layer {layer!r} not found; modules called in forward: {names}")
        cut = hits[-1]
    z_node = cut.args[0]
    if not isinstance(z_node, fx.Node):
        raise BanscanError(f"cannot split at {cut.target!r}: its input is not a tensor")

    ancestors: set[fx.Node] = set()
    stack = [z_node]
    while stack:
        n = stack.pop()
        if n in ancestors:
            continue
        ancestors.add(n)
        stack.extend(a for a in n.all_input_nodes)

    fg, env = fx.Graph(), {}
    for n in nodes:
        if n in ancestors:
            env[n] = fg.node_copy(n, lambda a: env[a])
    fg.output(env[z_node])

    hg, henv = fx.Graph(), {}
    henv[z_node] = hg.placeholder("z")
    for n in nodes:
        if n in ancestors or n.op == "placeholder":
            continue
        for a in n.all_input_nodes:
            if a not in henv:
                raise BanscanError(
                    f"cannot split at {cut.target!r}: the head also uses {a.name!r}, computed before the split"
                )
        henv[n] = hg.node_copy(n, lambda a: henv[a])
    return fx.GraphModule(gm, fg), fx.GraphModule(gm, hg)


class SplitModel(nn.Module):
    """A classifier seen as ``head(features(x))``, with input normalisation built in.

    Args:
        model: the classifier. It is used as is (wrap a copy if it must stay untouched); ``forward`` is
            ``model(normalize(x))``, and the feature/head split is only built when first used.
        mean, std: per-channel normalisation applied to inputs in ``[0, 1]``.
        split_layer: for models without ``forward_features``/``forward_head``, the module whose input is
            the feature map; ``None`` means the last global pooling.

    Shape:
        x: ``(N, C, H, W)`` float in ``[0, 1]``; ``features(x)``: ``(N, *feature_shape)``; ``head(z)``: ``(N, K)``.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 split_layer: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))
        self.split_layer = split_layer
        self.num_classes: int | None = None  # set by probe()
        self._split: tuple | None = None

    def _parts(self) -> tuple:
        # The split is built on first use, so that plain classification works for any model.
        if self._split is None:
            native = hasattr(self.model, "forward_features") and hasattr(self.model, "forward_head")
            if native and self.split_layer is None:
                self._split = (self.model.forward_features, self.model.forward_head)
            else:
                self._split = _fx_split(self.model, self.split_layer)
        return self._split

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self._parts()[0](self.normalize(x))

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self._parts()[1](z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))

    @torch.no_grad()
    def probe(self, x: torch.Tensor, labels: torch.Tensor) -> int:
        """Run a few images through; return the number of classes, or raise a clear error for a model that
        fails, returns something other than logits, has too few outputs for ``labels`` or is non-finite."""
        try:
            out = self(x)
        except Exception as e:
            raise BanscanError(
                f"the model failed on images of shape {tuple(x.shape[1:])} ({type(e).__name__}: {e})"
            ) from None
        if out.dim() != 2:
            raise BanscanError(f"the model returned shape {tuple(out.shape)}; expected (batch, num_classes) logits")
        k = out.shape[1]
        if int(labels.max()) >= k:
            raise BanscanError(f"labels go up to {int(labels.max())} but the model has only {k} outputs")
        if not torch.isfinite(out).all():
            raise BanscanError("the model produces non-finite logits on clean images")
        self.num_classes = k
        return k
