"""The benchmark report: ``report.md`` (plots as PNG files beside it) and a self-contained ``report.html``.

Built from ``RESULTS/results.jsonl`` (and ``runs.jsonl``) alone by :func:`write_report`. Mitigation results,
written by ``banscan mitigate`` to ``RESULTS/mitigation.jsonl``, are merged in by :func:`mitigation_section`,
the extension point for further sections.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import os
import shlex
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._utils import BanscanError
from .io import MITIGATION_NAME, RESULTS_NAME, RUNS_NAME, load_records, read_jsonl
from .metrics import compute_metrics, roc_points

__all__ = ["write_report", "mitigation_section"]


# ---------------------------------------------------------------------------------- document model
@dataclass
class Doc:
    """A report as a list of blocks, rendered once to Markdown and once to HTML."""

    blocks: list[tuple[Any, ...]] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items: Sequence[str]) -> None:
        self.blocks.append(("ul", list(items)))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.blocks.append(("table", list(header), [[str(c) for c in r] for r in rows]))

    def img(self, name: str, png: bytes, caption: str) -> None:
        self.blocks.append(("img", name, png, caption))

    def fold(self, summary: str) -> None:
        """Start a folded part (``<details>`` in HTML; in Markdown, which cannot fold, a heading)."""
        self.blocks.append(("fold", summary))

    def unfold(self) -> None:
        self.blocks.append(("unfold",))

    def markdown(self, img_dir: Path, img_rel: str) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "ul":
                out.append("\n".join(f"- {s}" for s in b[1]))
            elif b[0] == "table":
                rows = [b[1], ["---"] * len(b[1])] + b[2]
                out.append("\n".join("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows))
            elif b[0] == "fold":
                out.append(f"<details><summary>{b[1]}</summary>\n")
            elif b[0] == "unfold":
                out.append("</details>")
            elif b[0] == "img":
                img_dir.mkdir(parents=True, exist_ok=True)
                (img_dir / f"{b[1]}.png").write_bytes(b[2])
                out.append(f"![{b[3]}]({img_rel}/{b[1]}.png)\n\n*{b[3]}*")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        e = html.escape
        out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{_CSS}</style>"
               "</head><body>"]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                out.append(f"<p>{_inline(b[1])}</p>")
            elif b[0] == "ul":
                out.append("<ul>" + "".join(f"<li>{_inline(s)}</li>" for s in b[1]) + "</ul>")
            elif b[0] == "table":
                head = "".join(f"<th>{_inline(c)}</th>" for c in b[1])
                body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in b[2])
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif b[0] == "fold":
                out.append(f"<details><summary>{_inline(b[1])}</summary>")
            elif b[0] == "unfold":
                out.append("</details>")
            elif b[0] == "img":
                data = base64.b64encode(b[2]).decode("ascii")
                out.append(f"<figure><img alt='{e(b[3])}' src='data:image/png;base64,{data}'>"
                           f"<figcaption>{e(b[3])}</figcaption></figure>")
        out.append("</body></html>")
        return "\n".join(out)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%}figcaption{font-size:0.85em;color:#555}code{background:#f4f4f4;padding:0 3px}")


def _inline(text: str) -> str:
    """Escape text for HTML, turning `code` spans into <code> and **bold** into <b>."""
    parts = html.escape(text).split("`")
    s = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    bold = s.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(bold))


# ---------------------------------------------------------------------------------- formatting
def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None, nd: int = 3) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def _ci(m: Mapping[str, Any] | None, pct: bool = True) -> str:
    if not m or m.get("value") is None:
        return "–"
    f = _pct if pct else _num
    ci = m.get("ci")
    if ci is None:
        return f(m["value"])
    lo, hi = ci
    return f"{f(m['value'])} [{f(lo)}, {f(hi)}]" if pct else f"{f(m['value'])} [{_num(lo, 2)}, {_num(hi, 2)}]"


# ---------------------------------------------------------------------------------- sections
def _header(doc: Doc, results: Path, records: list[dict], runs: list[dict], methods: list[str]) -> None:
    doc.h(1, "banscan benchmark report")
    models = {r["model"]: r for r in records}
    by_attack: dict[str, int] = {}
    for r in models.values():
        key = str(r["attack"]) if r["backdoored"] else "clean"
        by_attack[key] = by_attack.get(key, 0) + 1
    zoos = sorted({run.get("zoo", "?") for run in runs})
    doc.bullets([
        f"zoo: {', '.join(f'`{z}`' for z in zoos) or '?'}; {len(models)} models: "
        + ", ".join(f"{k} {v}" for k, v in sorted(by_attack.items())),
        f"methods: {', '.join(methods)}; {len(records)} finished scans (provenance at the end)",
    ])


def _provenance(doc: Doc, results: Path, runs: list[dict]) -> None:
    """Where the results came from: every run, its commit, command and parameters (folded, at the end)."""
    doc.h(2, "Provenance")
    doc.fold(f"{len(runs)} run(s) wrote these results; commits, commands and parameters")
    doc.p(f"Results `{results}`, report generated "
          f"{_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}.")
    if runs:
        doc.p("Runs that wrote these results (a resumed benchmark has several):")
        doc.table(["time (UTC)", "commit", "command", "device", "pairs scanned"],
                  [[r.get("time", ""), f"`{r.get('commit') or '?'}`", f"`{shlex.join(r.get('argv') or []) or '(API)'}`",
                    r.get("device") or "cpu", r.get("n_todo", "")] for r in runs])
    params = {}
    for r in runs:
        params.update(r.get("params") or {})
    if params:
        doc.p("Detector parameters: " + "; ".join(f"**{m}** `{_short_params(p)}`" for m, p in sorted(params.items())))
    doc.unfold()


def _short_params(p: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(p.items()) if v is not None)


def _definitions(doc: Doc, fpr: float, calibration: str, n_boot: int) -> None:
    doc.h(2, "How to read this report")
    doc.bullets([
        f"**Threshold**: fitted on clean models only, for a false-positive budget of {fpr:.0%} "
        f"(`banscan.detectors.calibrate_threshold`), scheme `{calibration}`: under `loo` (`kfold:K`) each clean "
        "model is judged by a threshold fitted on the other clean models (folds), and backdoored models by the "
        "threshold fitted on all clean models; under `holdout:F` a share F of the clean models fits one threshold "
        "and is not evaluated. No backdoored model and no attack knowledge enters a threshold.",
        "**DSR** (detection success rate, as in the BAN paper): backdoored models flagged / backdoored models; on "
        "the clean row, clean models passed / clean models. **DSR+T**: flagged *and* suspected target = true target "
        "(models whose attack has one target). **Target acc.**: suspected target right, whatever the verdict.",
        "**Clean FPR**: clean models flagged / clean models. **Acc.**: correct verdicts over all evaluated models.",
        "**AUROC**: probability that a backdoored model scores above a clean one (ties count 1/2), threshold-free. "
        "**AUPR**: average precision, backdoored = positive. **TPR@FPR**: best TPR at FPR <= budget over the ROC "
        "(an in-sample oracle threshold, unlike DSR).",
        "**default**: the detector's own built-in threshold, shown for comparison.",
        f"Brackets: 95% percentile bootstrap interval over models ({n_boot} resamples, seeded; backdoored and "
        "clean models resampled separately). Per-attack rows compare that attack's models with all clean models.",
    ])


def _data_budget(records: list[dict], method: str) -> str:
    """The defender images a method used: optimisation / decision (from the records' parameters)."""
    used = sorted({((r.get("params") or {}).get("n_opt"), (r.get("params") or {}).get("n_eval")) for r in records
                   if r["method"] == method}, key=str)
    return ", ".join(f"{o} / {e}" for o, e in used if (o, e) != (None, None)) or "–"


def _summary(doc: Doc, records: list[dict], metrics: Mapping[str, Any], fpr: float) -> None:
    doc.h(2, "Summary per method")
    rows = []
    for m, mm in metrics.items():
        o, c = mm["overall"], mm["clean"]
        rows.append([m, o["n_backdoored"], o["n_clean"], _ci(o["auroc"], pct=False), _num(o["aupr"]),
                     _pct(o["tpr_at_fpr"]), _ci(o["dsr"]), _ci(o["dsr_target"]), _ci(o["target_acc"]),
                     _ci(c["clean_fpr"]), _pct(o["acc"]), f"{_pct(o['dsr_default'])} / {_pct(o['fpr_default'])}",
                     _num(o["time_mean"], 1), _num(o["time_median"], 1), _data_budget(records, m)])
    doc.table(["method", "backdoored", "clean", "AUROC", "AUPR", f"TPR@{fpr:.0%}FPR", "DSR", "DSR+T", "target acc.",
               "clean FPR", "Acc.", "default DSR / FPR", "mean s", "median s", "images opt / eval"], rows)


def _per_attack(doc: Doc, metrics: Mapping[str, Any], fpr: float) -> None:
    doc.h(2, "Per attack, methods side by side")
    methods = list(metrics)
    attacks = sorted({a for mm in metrics.values() for a in mm["attacks"]})
    tables = [("Detection success rate (DSR)", lambda g: _ci(g["dsr"]), True),
              ("DSR with the target also right (DSR+T)", lambda g: _ci(g["dsr_target"]), False),
              ("AUROC (attack vs all clean models)", lambda g: _ci(g["auroc"], pct=False), False),
              (f"TPR at {fpr:.0%} FPR", lambda g: _pct(g["tpr_at_fpr"]), False),
              ("DSR with the detector's default threshold", lambda g: _pct(g["dsr_default"]), True)]
    for title, cell, with_clean in tables:
        doc.h(3, title)
        rows = []
        for a in attacks:
            n = max((mm["attacks"][a]["n_backdoored"] for mm in metrics.values() if a in mm["attacks"]), default=0)
            rows.append([a, n] + [cell(metrics[m]["attacks"][a]) if a in metrics[m]["attacks"] else "–"
                                  for m in methods])
        rows.append(["**all attacks**", max(mm["overall"]["n_backdoored"] for mm in metrics.values())]
                    + [cell(metrics[m]["overall"]) for m in methods])
        if with_clean:
            default = title.endswith("default threshold")
            rows.append(["no attack (clean passed)", max(mm["clean"]["n_clean"] for mm in metrics.values())]
                        + [_pct(None if metrics[m]["clean"]["fpr_default"] is None
                                else 1 - metrics[m]["clean"]["fpr_default"]) if default
                           else _ci(metrics[m]["clean"]["clean_pass"]) for m in methods])
        doc.table(["attack", "models"] + methods, rows)


def _thresholds(doc: Doc, metrics: Mapping[str, Any]) -> None:
    doc.h(2, "Thresholds and the models that fitted them")
    rows = []
    for m, mm in metrics.items():
        cal = mm["calibration"]
        if cal.all_clean is None:
            rows.append([m, f"`{cal.scheme}`", f"{cal.fpr:.0%}", "–", "–", f"no threshold: {cal.note}"])
            continue
        per_clean = sorted({(tf.threshold, tf.fitted_on) for mid, tf in cal.per_model.items()
                            if mid in cal.all_clean.fitted_on})
        judged = (f"{len(per_clean)} thresholds {min(t for t, _ in per_clean):.4f}..{max(t for t, _ in per_clean):.4f},"
                  " each fitted without the clean models it judges") if per_clean else "–"
        fit_ids = cal.fit_only or cal.all_clean.fitted_on
        rows.append([m, f"`{cal.scheme}`", f"{cal.fpr:.0%}", _num(cal.all_clean.threshold, 4),
                     ", ".join(fit_ids), judged])
    doc.table(["method", "scheme", "FPR budget", "threshold for backdoored models", "fitted on (clean only)",
               "clean models judged by"], rows)


def _plots(doc: Doc, records: list[dict], metrics: Mapping[str, Any]) -> None:
    from ..plots import figure_png, roc_figure, score_hist_figure, time_figure

    doc.h(2, "Plots")
    curves, aucs, hists, times = {}, {}, {}, {}
    for m, mm in metrics.items():
        recs = [r for r in records if r["method"] == m]
        neg = [r["score"] for r in recs if not r["backdoored"]]
        pos_by = {a: [r["score"] for r in recs if r["backdoored"] and str(r["attack"]) == a] for a in mm["attacks"]}
        curves[m] = {"all attacks": roc_points([s for v in pos_by.values() for s in v], neg),
                     **{a: roc_points(v, neg) for a, v in pos_by.items()}}
        aucs[m] = {"all attacks": mm["overall"]["auroc"]["value"],
                   **{a: g["auroc"]["value"] for a, g in mm["attacks"].items()}}
        fit = mm["calibration"].all_clean
        hists[m] = (neg, [r["score"] for r in recs if r["backdoored"]], None if fit is None else fit.threshold)
        times[m] = [r["timings"]["total"] for r in recs]
    doc.img("roc", figure_png(roc_figure(curves, aucs)),
            "ROC curves across models: each attack's backdoored models against all clean models (AUROC in legend)")
    doc.img("scores", figure_png(score_hist_figure(hists)),
            "Scores of clean vs backdoored models; dashed: threshold fitted on all clean models")
    doc.img("time", figure_png(time_figure(times)), "Detector time per model (sum of phases), log scale")


def _cost_ratio(records: list[dict], method: str, base: str) -> str:
    """``method``'s time over ``base``'s on the same models: min / median / max of the per-model ratios."""
    t = {(r["model"], r["method"]): r["timings"]["total"] for r in records}
    q = sorted(t[k, method] / t[k, base] for k, m in t if m == method and t.get((k, base), 0) > 0)
    return f"{q[0]:.1f} / {statistics.median(q):.1f} / {q[-1]:.1f}" if q else "–"


def _time_table(doc: Doc, records: list[dict], methods: list[str]) -> None:
    doc.h(2, "Time and memory per model")
    rows = []
    for m in methods:
        recs = [r for r in records if r["method"] == m]
        tot = [r["timings"]["total"] for r in recs]
        warm = [r["timings"]["total"] for r in recs if not r.get("first_in_process")]
        phases: dict[str, list[float]] = {}
        for r in recs:
            for k, v in r["timings"].items():
                if k != "total":
                    phases.setdefault(k, []).append(v)
        mem = [r.get("peak_mem_mb", 0.0) for r in recs]
        kinds = sorted({r.get("mem_kind", "?") for r in recs})
        rows.append([m, len(recs), _num(statistics.mean(tot), 1), _num(statistics.mean(warm) if warm else None, 1),
                     _num(statistics.median(tot), 1), _num(max(tot), 1),
                     _num(statistics.mean(r.get("wall_s", 0.0) for r in recs), 1),
                     ", ".join(f"{k} {statistics.mean(v):.1f}" for k, v in phases.items()),
                     f"{statistics.mean(mem):.0f} / {max(mem):.0f}", ", ".join(kinds),
                     ", ".join(sorted({r.get("device", "?") for r in recs})), _cost_ratio(records, m, methods[0])])
    doc.table(["method", "models", "mean s", "mean s, warm", "median s", "max s", "mean wall s (incl. copy)",
               "mean s per phase", "peak MiB mean / max", "memory measure", "device",
               f"x {methods[0]} per model (min / median / max)"], rows)
    doc.p("Time: the detector's own phases (`timings.total`); *warm* leaves out the first scan of each method in "
          "each process, which also pays one-time start-up costs (lazy initialisation, kernel loading). "
          "Memory: `cpu_maxrss_delta` is the peak resident memory during the scan above the resident memory at its "
          "start (`ru_maxrss`, its peak mark reset before each scan); `cpu_maxrss_delta_monotone` (no reset possible) "
          "counts only growth beyond every earlier peak, a lower bound; `cuda_max_allocated` is "
          "`torch.cuda.max_memory_allocated` over the scan.")


def _ban_examples(doc: Doc, records: list[dict], n_max: int) -> None:
    from ..plots import ban_hist_figure, figure_png

    ban = [r for r in records if r["method"] == "ban" and "hist_noise_negmask" in (r.get("stats") or {})]
    if not ban or n_max <= 0:
        return
    picks, seen = [], set()
    for r in sorted(ban, key=lambda r: (not r["backdoored"], str(r["attack"]), r["model"])):
        key = str(r["attack"]) if r["backdoored"] else None
        if key not in seen:
            picks.append(r)
            seen.add(key)
    clean = [r for r in ban if not r["backdoored"]]
    picks += [r for r in clean if r not in picks][:1]
    picks = picks[:n_max]
    doc.h(2, "BAN: predictions under adversarial neuron noise")
    ex = [{"title": f"{r['model']} ({r['attack'] or 'clean'}), score {r['score']:.2f}",
           "hist_clean": r["stats"]["hist_clean"], "hist_noise": r["stats"].get("hist_noise"),
           "hist_noise_negmask": r["stats"]["hist_noise_negmask"], "true_target": r.get("true_target")}
          for r in picks]
    doc.img("ban_histograms", figure_png(ban_hist_figure(ex)),
            "Share of evaluation images per predicted class: clean model, under noise, and under noise on the "
            "negative-mask features (BAN's decision); dotted: the attack's true target")


def _per_model(doc: Doc, records: list[dict], metrics: Mapping[str, Any]) -> None:
    doc.h(2, "Per model")
    methods = list(metrics)
    by_model: dict[str, dict[str, dict]] = {}
    for r in records:
        by_model.setdefault(r["model"], {})[r["method"]] = r
    rows = []
    for mid, recs in sorted(by_model.items(), key=lambda kv: (next(iter(kv[1].values()))["backdoored"], kv[0])):
        any_r = next(iter(recs.values()))
        row = [mid, any_r["attack"] or "clean", "–" if any_r.get("true_target") is None else any_r["true_target"],
               _pct(any_r.get("BA")), _pct(any_r.get("ASR"))]
        for m in methods:
            r = recs.get(m)
            if r is None:
                row.append("–")
                continue
            tf = metrics[m]["calibration"].per_model.get(mid)
            if metrics[m]["calibration"].all_clean is None:
                row.append(f"{r['score']:.3f} t={r.get('target')}")
                continue
            verdict = "fit only" if tf is None else ("FLAG" if r["score"] >= tf.threshold else "pass")
            right = (verdict == "FLAG") == bool(r["backdoored"]) if tf is not None else True
            row.append(f"{r['score']:.3f} {verdict}{'' if right else ' ✗'} t={r.get('target')}")
        rows.append(row)
    doc.table(["model", "attack", "true target", "BA", "ASR"] + methods, rows)
    doc.p("Cells: score, calibrated verdict (✗ = wrong), suspected target `t`.")


def _errors(doc: Doc, results: Path, records: list[dict], unscored: list[dict]) -> None:
    done = {(r["model"], r["method"]) for r in records + unscored}
    errs = [r for r in load_records(results, ok_only=False)
            if r["status"] != "ok" and (r["model"], r["method"]) not in done]
    errs += [{**r, "error": "no finite score"} for r in unscored]
    if errs:
        doc.h(2, "Scans that failed")
        doc.table(["model", "method", "error"], [[r["model"], r["method"], r.get("error", "")] for r in errs])


def _noise_on_true_target(records: Sequence[dict]) -> dict[str, float]:
    """Per backdoored model scanned by BAN: the share of its predictions under noise (no mask) on the true target."""
    out = {}
    for r in records:
        h, t = (r.get("stats") or {}).get("hist_noise"), r.get("true_target")
        if r.get("method") == "ban" and h and sum(h) and isinstance(t, int) and 0 <= t < len(h):
            out[str(r["model"])] = h[t] / sum(h)
    return out


def mitigation_section(results: str | os.PathLike, doc: Doc, records: Sequence[dict] = ()) -> bool:
    """Extension point: merge ``RESULTS/mitigation.jsonl`` (if present) into the report as a section.

    Records are :class:`banscan.bench.MitigationRecord` (rates are fractions; anything else is an error). The last
    record per (model, method) wins. When ``records`` holds BAN scans of the same models, each row also shows how
    strongly BAN's noise activated the backdoor (share of noisy predictions on the true target), with a plot of ASR
    after repair against it. Returns whether a section was added.
    """
    from .mitigate import read_mitigation_records

    recs = read_mitigation_records(Path(results) / MITIGATION_NAME)
    if not recs:
        return False
    last = {(r.model, r.method): r for r in recs}
    doc.h(2, "Mitigation")
    noise = _noise_on_true_target(records)
    verified = any(r.verify for r in last.values())
    rows = [[m, meth, *(_pct(v) for v in (r.BA_before, r.BA_after, r.ASR_before, r.ASR_after, r.RA_after)),
             _asr_any(r)] + ([_scan_after(r)] if verified else [])
            + [_num(r.time_s, 1), r.device or "–"] + ([_pct(noise.get(m))] if noise else [])
            for (m, meth), r in sorted(last.items())]
    doc.p("ASR any: triggered images sent to the one class that collects most of them (of those not of that "
          "class). A repair that only moves the backdoor to a new label shows a low ASR and a high ASR any.")
    if verified:
        doc.p("Scan after repair: the verdict of a detector run on the repaired model (`verify`), the check a user "
              "without the trigger can make. * marks a verdict that says little: the detector did not flag the "
              "model before the repair either, or it belongs to the repair's own family, which the repair is "
              "trained to pass (the record's `note` says which).")
    if noise:
        doc.p("BAN noise on target: in BAN's scan of the model, the share of predictions under adversarial neuron "
              "noise (no mask) that went to the true target. BAN fine-tuning unlearns what that noise activates.")
    doc.table(["model", "method", "BA before", "BA after", "ASR before", "ASR after", "RA after", "ASR any after"]
              + (["scan after repair"] if verified else []) + ["time s", "device"]
              + (["BAN noise on target"] if noise else []), rows)
    points: dict[str, list[tuple[float, float]]] = {}
    for (m, meth), r in sorted(last.items()):
        if m in noise and r.ASR_after is not None:
            points.setdefault(meth, []).append((noise[m], r.ASR_after))
    if points:
        from ..plots import figure_png, repair_figure

        doc.img("repair_vs_noise", figure_png(repair_figure(points)),
                "ASR after repair against the share of noisy predictions BAN's scan sent to the true target")
    _mitigation_means(doc, list(last.values()))
    return True


def _asr_any(r: Any) -> str:
    # Optional (records since 2026-11-26): success towards the class that now collects the triggered images.
    return "–" if r.ASR_any_after is None else f"{_pct(r.ASR_any_after)} (class {r.ASR_any_class_after})"


def _scan_after(r: Any) -> str:
    # Optional (mitigate_zoo(..., verify=...)): the detector's verdict on the repaired model and its class.
    v = r.verify
    if not v:
        return "–"
    # The verdict before is checked here too: records written before verify_repair noted it lack that note.
    a, weak = v["after"], v.get("note") or v.get("before", {}).get("verdict") != "backdoored"
    return f"{v['detector']}: {a['verdict']} (class {a['target']})" + (" *" if weak else "")


def _mitigation_means(doc: Doc, recs: list[Any]) -> None:
    """Means per method and per attack of the mitigation records."""
    by_method: dict[str, list[Any]] = {}
    by_attack: dict[str, dict[str, list[Any]]] = {}
    for r in recs:
        by_method.setdefault(r.method, []).append(r)
        by_attack.setdefault(str(r.attack or "?"), {}).setdefault(r.method, []).append(r)

    def avg(rs: list[Any], k: str) -> float | None:
        vals = [getattr(r, k) for r in rs if getattr(r, k) is not None]
        return statistics.mean(vals) if vals else None

    def drop(rs: list[Any]) -> float | None:
        pairs = [r.BA_before - r.BA_after for r in rs if r.BA_before is not None and r.BA_after is not None]
        return statistics.mean(pairs) if pairs else None

    doc.table(["method", "models", "mean BA drop (points)", "mean ASR after", "mean RA after", "mean time s"],
              [[m, len(rs), _pct(drop(rs)), _pct(avg(rs, "ASR_after")), _pct(avg(rs, "RA_after")),
                _num(avg(rs, "time_s"), 1)] for m, rs in sorted(by_method.items())])
    methods = sorted(by_method)
    doc.p("Per attack: mean ASR after repair / mean BA drop in points (models repaired).")
    doc.table(["attack", *methods],
              [[a, *(f"{_pct(avg(per[m], 'ASR_after'))} / {_pct(drop(per[m]))} ({len(per[m])})" if m in per else "–"
                     for m in methods)] for a, per in sorted(by_attack.items())])


# ---------------------------------------------------------------------------------- entry point
def write_report(results: str | os.PathLike, fpr: float = 0.05, calibration: str = "loo", n_boot: int = 1000,
                 seed: int | None = None, n_ban_examples: int = 6) -> tuple[Path, Path]:
    """Write ``report.md`` (+ ``plots/*.png``) and ``report.html`` into the results folder; returns both paths."""
    res = Path(results)
    if not (res / RESULTS_NAME).is_file():
        raise BanscanError(f"{res} has no {RESULTS_NAME}; run `banscan bench --zoo DIR --out {res}` first")
    records = load_records(res)
    if not records:
        raise BanscanError(f"{res / RESULTS_NAME} holds no finished scan yet")
    unscored = [r for r in records if not isinstance(r.get("score"), (int, float)) or not math.isfinite(r["score"])]
    records = [r for r in records if r not in unscored]
    runs = read_jsonl(res / RUNS_NAME)
    if seed is None:
        seed = int(runs[-1].get("seed", 0)) if runs else 0
    metrics = compute_metrics(records, fpr=fpr, calibration=calibration, seed=seed, n_boot=n_boot)
    methods = list(metrics)
    doc = Doc()
    _header(doc, res, records, runs, methods)
    _summary(doc, records, metrics, fpr)
    _plots(doc, records, metrics)
    _definitions(doc, fpr, calibration, n_boot)
    _per_attack(doc, metrics, fpr)
    _thresholds(doc, metrics)
    _time_table(doc, records, methods)
    _ban_examples(doc, records, n_ban_examples)
    mitigation_section(res, doc, records)
    _per_model(doc, records, metrics)
    _errors(doc, res, records, unscored)
    _provenance(doc, res, runs)
    md, page = res / "report.md", res / "report.html"
    md.write_text(doc.markdown(res / "plots", "plots"), encoding="utf-8")
    page.write_text(doc.html("banscan benchmark report"), encoding="utf-8")
    return md, page
