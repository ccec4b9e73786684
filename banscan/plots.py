"""PNG plots of scan results and benchmarks (matplotlib, Agg backend; imported lazily).

The benchmark figures (:func:`roc_figure`, :func:`score_hist_figure`, :func:`time_figure`,
:func:`ban_hist_figure`) take plain Python data and return a ``matplotlib.figure.Figure`` built without pyplot,
so nothing depends on global pyplot state or leaks figures; :func:`figure_png` renders one to PNG bytes.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .detectors import DetectionResult

__all__ = ["save_result_plots", "figure_png", "roc_figure", "score_hist_figure", "time_figure", "ban_hist_figure"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


# 65 lines: one figure after another, each a few independent lines; splitting would only add names.
def save_result_plots(result: DetectionResult, out_dir: str | os.PathLike) -> list[Path]:
    """Save the prediction histograms (without noise, with noise, with noise and negative mask), the per-class
    statistics of the p-value rules (class-wise noise, MM-BD margins) and the mask or trigger artefacts of
    ``result`` as PNG files, whichever ``result`` holds; returns their paths."""
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    hists = [(k, result.stats[k]) for k in ("hist_clean", "hist_noise", "hist_noise_negmask") if k in result.stats]
    if hists:
        labels = {"hist_clean": "no noise", "hist_noise": "noise", "hist_noise_negmask": "noise + negative mask"}
        k = len(hists[0][1])
        fig, ax = plt.subplots(figsize=(max(5, 0.45 * k + 2), 3.2))
        w = 0.8 / len(hists)
        for i, (key, h) in enumerate(hists):
            ax.bar([c + (i - (len(hists) - 1) / 2) * w for c in range(k)], h, width=w, label=labels[key])
        ax.set_xlabel("predicted class")
        ax.set_ylabel("clean evaluation images")
        ax.set_title(f"{result.detector}: {result.verdict} (score {result.score:.3f}, target {result.target})")
        ax.set_xticks(range(k))
        ax.legend(fontsize=8)
        fig.tight_layout()
        f = out / "histograms.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(f)
    per_class = [(lbl, v) for lbl, v in (
        ("class-wise noise: share of other-class images sent", result.stats.get("classwise", {}).get("mean")),
        ("MM-BD maximum margin", result.stats.get("mmbd", result.stats).get("max_margin"))) if v]
    if per_class:  # the p-value statistics: is one class an outlier among the model's own classes?
        fig, axes = plt.subplots(1, len(per_class), figsize=(4.2 * len(per_class), 3.2), squeeze=False)
        for ax, (lbl, v) in zip(axes[0], per_class):
            ax.bar(range(len(v)), v, color=["C3" if c == result.target else "C0" for c in range(len(v))])
            ax.set_xlabel("class")
            ax.set_title(lbl, fontsize=8)
            ax.set_xticks(range(len(v)))
        fig.suptitle(f"{result.detector}: {result.verdict} (score {result.score:.3f}, target {result.target})",
                     fontsize=9)
        fig.tight_layout()
        f = out / "per_class.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(f)
    for name, t in result.artifacts.items():
        t = t.detach().float().cpu()
        if t.dim() == 4:
            t = t[0]
        fig, ax = plt.subplots(figsize=(3.4, 3.2))
        if t.dim() == 3 and t.shape[0] == 3 and name != "mask":
            img = t.permute(1, 2, 0)
            img = (img - img.min()) / (img.max() - img.min() + 1e-12)
            ax.imshow(img.numpy())
        else:
            img = t.mean(0) if t.dim() == 3 else t.reshape(t.shape[0], -1) if t.dim() == 2 else t.reshape(1, -1)
            im = ax.imshow(img.numpy(), cmap="viridis")
            fig.colorbar(im, ax=ax, fraction=0.046)
        ax.set_title(f"{name} {tuple(t.shape)}" + (" (channel mean)" if t.dim() == 3 and name == "mask" else ""),
                     fontsize=8)
        ax.axis("off")
        fig.tight_layout()
        f = out / f"{name}.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(f)
    return files


# ------------------------------------------------------------------------------- benchmark figures
def _figure(n_panels: int, panel_w: float = 4.0, panel_h: float = 3.2, max_cols: int = 4):
    from matplotlib.figure import Figure

    cols = max(1, min(n_panels, max_cols))
    rows = max(1, math.ceil(n_panels / cols))
    fig = Figure(figsize=(panel_w * cols, panel_h * rows), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(max(1, n_panels))]
    return fig, axes


def figure_png(fig: Any, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (rendered with Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def roc_figure(curves: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]],
               aucs: Mapping[str, Mapping[str, float | None]] | None = None) -> Any:
    """One panel per method, one ROC curve per group (e.g. per attack): ``curves[method][group] = [(fpr, tpr)]``."""
    fig, axes = _figure(len(curves))
    for ax, (method, groups) in zip(axes, curves.items()):
        for group, pts in groups.items():
            if not pts:
                continue
            auc = (aucs or {}).get(method, {}).get(group)
            label = group if auc is None else f"{group} ({auc:.2f})"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, lw=2.5 if group.startswith("all") else 1.2,
                    marker="." if len(pts) < 30 else None)
        ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8)
        ax.set(title=method, xlabel="false-positive rate (clean models)", ylabel="true-positive rate",
               xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
        ax.legend(fontsize=7, loc="lower right", title="AUROC", title_fontsize=7)
    return fig


def score_hist_figure(scores: Mapping[str, tuple[Sequence[float], Sequence[float], float | None]]) -> Any:
    """One panel per method: histograms of clean and backdoored models' scores and the clean-fitted threshold."""
    fig, axes = _figure(len(scores))
    for ax, (method, (clean, bd, thr)) in zip(axes, scores.items()):
        vals = list(clean) + list(bd) + ([thr] if thr is not None and math.isfinite(thr) else [])
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
        bins = [lo + (hi - lo + 1e-9) * i / 20 for i in range(21)]
        ax.hist(list(clean), bins=bins, alpha=0.6, label=f"clean ({len(clean)})", color="tab:blue")
        ax.hist(list(bd), bins=bins, alpha=0.6, label=f"backdoored ({len(bd)})", color="tab:red")
        if thr is not None and math.isfinite(thr):
            ax.axvline(thr, c="k", ls="--", lw=1, label="threshold (all clean)")
        ax.set(title=method, xlabel="score (higher = more suspicious)", ylabel="models")
        ax.legend(fontsize=7)
    return fig


def time_figure(times: Mapping[str, Sequence[float]]) -> Any:
    """Seconds per model of each method, one box per method (log scale)."""
    fig, axes = _figure(1, panel_w=max(4.0, 1.2 * len(times)), panel_h=3.2)
    ax = axes[0]
    names = list(times)
    ax.boxplot([list(times[n]) or [float("nan")] for n in names], showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names)
    if any(v > 0 for vs in times.values() for v in vs):
        ax.set_yscale("log")
    ax.set(ylabel="seconds per model (detector phases)", title="time per model")
    return fig


def ban_hist_figure(examples: Sequence[Mapping[str, Any]]) -> Any:
    """Class histograms of clean predictions and of predictions under noise (with the negative mask).

    Each example: ``title``, ``hist_clean``, ``hist_noise_negmask`` and optionally ``true_target`` and
    ``hist_noise`` (noise without the mask).
    """
    fig, axes = _figure(len(examples), panel_w=3.6, panel_h=2.8, max_cols=3)
    for ax, ex in zip(axes, examples):
        k = len(ex["hist_clean"])
        xs = list(range(k))
        series = [("clean", ex["hist_clean"], "tab:blue"), ("noise", ex.get("hist_noise"), "tab:orange"),
                  ("noise, neg. mask", ex["hist_noise_negmask"], "tab:red")]
        series = [s for s in series if s[1] is not None]
        w = 0.8 / len(series)
        for j, (label, h, color) in enumerate(series):
            total = max(1, sum(h))
            ax.bar([x + (j - (len(series) - 1) / 2) * w for x in xs], [v / total for v in h], width=w, label=label,
                   color=color)
        if ex.get("true_target") is not None:
            ax.axvline(ex["true_target"], c="k", ls=":", lw=1, label="true target")
        ax.set(title=ex["title"], xlabel="predicted class", ylabel="share of images", ylim=(0, 1.05))
        ax.set_xticks(xs if k <= 12 else xs[::max(1, k // 10)])
        ax.legend(fontsize=6)
    return fig


def repair_figure(points: Mapping[str, Sequence[tuple[float, float]]]) -> Any:
    """ASR after repair (y) against BAN's noise share on the true target (x); one marker series per method."""
    fig, axes = _figure(1, panel_w=4.8, panel_h=3.6)
    ax = axes[0]
    for method, pts in points.items():
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=method, s=22, alpha=0.8)
    ax.set(xlabel="BAN scan: share of noisy predictions on the true target", ylabel="ASR after repair",
           ylim=(-0.03, 1.03), title="repair vs backdoor activation by noise")
    ax.legend(fontsize=7)
    return fig
