"""``report.html`` and ``manifest.html``: the job records as self-contained pages that work offline.

Rendered from the report's own dict (what ``report.json`` holds), with a Jinja2 template
(``templates/report.html.j2``) and plots drawn by matplotlib as inline SVG (text kept as
text, so no fonts are embedded). Nothing is loaded from anywhere: no script, no stylesheet,
no font and no image outside the file.

Its size is bounded whatever the run: the report holds aggregates only (histograms,
at most 200 curve points, the 20 most suspicious rows), and at most
:data:`MAX_CLASS_PLOTS` classes get a plot (those with the most flagged rows, then the
largest); the others are listed in a table.
"""

from __future__ import annotations

import io
import math
import re

from .report import percent, write_text

#: Classes drawn (one figure each, a panel per detector); the rest are listed with their numbers.
MAX_CLASS_PLOTS = 24
#: Classes in the before/after balance plot of manifest.html (the largest); all are in its table.
MAX_BALANCE_CLASSES = 40
#: Rows of the expectation table shown in full; failing expectations always come first.
MAX_EXPECTATION_ROWS = 400

_TEMPLATE = "report.html.j2"


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "svg.fonttype": "none",        # text stays text: no embedded glyphs, smaller files
        "svg.hashsalt": "poisonguard",  # stable ids: the same report renders the same page
        "font.size": 8,
        "font.family": "sans-serif",
        "axes.spines.top": False,
        "axes.spines.right": False,
    })
    return plt


def _svg(fig) -> str:
    """The figure as an inline ``<svg>`` element (no XML prolog, no doctype)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    _matplotlib().close(fig)
    text = buf.getvalue()
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text[text.index("<svg"):], flags=re.S)  # RDF boilerplate
    return re.sub(r"\s*\n\s*", "\n", text)  # matplotlib's indentation


def _count_label(value: float, _position=None) -> str:
    """A log count axis's tick label: a whole count with thousands separators."""
    return f"{value:,.0f}" if value >= 1 else ""


def _plain_text(text: str) -> str:
    """Text that matplotlib draws as written (a '$' would otherwise start mathtext)."""
    return str(text).replace("$", r"\$")


def _bins(hist: dict):
    """(lower edges, upper edges, counts) of a report histogram."""
    bins = hist.get("bins", [])
    return [b[0] for b in bins], [b[1] for b in bins], [b[2] for b in bins]


def _draw_hist(ax, hist: dict, color: str):
    lo, hi, counts = _bins(hist)
    if counts:
        # one filled step path over the occupied range (empty bins at the floor): a few KB of SVG, not a path per bar
        width = hi[0] - lo[0]
        first, n = lo[0], int(round((hi[-1] - lo[0]) / width))
        values = [0.0] * n
        for l, c in zip(lo, counts):
            values[min(int(round((l - first) / width)), n - 1)] = c
        edges = [first + i * width for i in range(n + 1)]
        ax.stairs([max(v, 0.7) for v in values], edges, fill=True, baseline=0.7, color=color, linewidth=0)
        ax.set_yscale("log")
        ax.set_ylim(0.7, max(counts) * 1.5)
        ax.minorticks_off()  # a log axis's minor ticks are most of an SVG's size
        # counts written out ("1,000") rather than matplotlib's "10^3" in mathtext, whose parser took 60% of the
        # page's rendering (1.7 s of 2.7 s for ten classes)
        ax.yaxis.set_major_formatter(_count_label)  # matplotlib wraps a function in a FuncFormatter
    extra = []
    if hist.get("below"):
        extra.append(f"{hist['below']} below {hist['range'][0]:g}")
    if hist.get("above"):
        extra.append(f"{hist['above']} above {hist['range'][1]:g}")
    if extra:
        ax.text(0.99, 0.97, ", ".join(extra), transform=ax.transAxes, ha="right", va="top", fontsize=7, color="#555")
    return (min(lo), max(hi)) if counts else None


def member_threshold(null: dict, cut_p: float | None, members: int) -> float | None:
    """The score at which a member alone reaches the class's cut (its p-value at most ``cut_p / M``), or None.

    Only for a member judged by a fitted generalised Pareto null (``p(s) = 0.5 (1 + shape (s -
    median) / scale) ** (-1 / shape)``; the exponential tail for shape 0).
    """
    if cut_p is None or not null or null.get("null") != "generalised Pareto tail":
        return None
    p = cut_p / max(members, 1)
    if not 0 < p < 0.5:
        return None
    loc, scale, shape = null["median"], null["tail_scale"], null["tail_shape"]
    if shape == 0:
        return loc + scale * math.log(0.5 / p)
    return loc + scale / shape * ((2 * p) ** (-shape) - 1)


def class_figure(name: str, summary: dict, decision: dict, members: list[str]) -> str:
    """One class: its combined suspicion with the cut, and each detector's score with the score that reaches the cut."""
    plt = _matplotlib()
    panels = [("suspicion", summary["suspicion"]["histogram"])] + [(m, summary.get("scores", {}).get(m)) for m in members]
    panels = [(title, hist) for title, hist in panels if hist is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.9 * len(panels), 1.9), squeeze=False)
    for ax, (title, hist) in zip(axes[0], panels):
        span = _draw_hist(ax, hist, "#4c72b0" if title == "suspicion" else "#8c8c8c")
        if title == "suspicion":
            ax.set_title("combined suspicion (-log10 p)", fontsize=8)
            line = decision.get("cut")
        else:
            ax.set_title(f"{title} score", fontsize=8)
            line = member_threshold(decision.get("members", {}).get(title), decision.get("cut_p"), len(members))
        if line is not None:
            ax.axvline(line, color="#c44e52", linewidth=1.2)
            ax.text(line, 0.97, f" cut {line:.3g}", transform=ax.get_xaxis_transform(), color="#c44e52", va="top", fontsize=7)
        elif title == "suspicion":
            ax.text(0.99, 0.80, "not cut", transform=ax.transAxes, ha="right", va="top", fontsize=7, color="#2a7a2a")
        elif decision.get("cut") is not None and (decision.get("members", {}).get(title) or {}).get("null") == "own p-values":
            ax.text(0.99, 0.80, "judged by its own p-values", transform=ax.transAxes, ha="right", va="top", fontsize=7, color="#555")
        if span is not None and line is not None:
            ax.set_xlim(min(span[0], line) - 0.05 * (span[1] - span[0] + 1e-9), max(span[1], line) * 1.05 + 1e-9)
        ax.set_ylabel("rows" if ax is axes[0][0] else "")
    fig.suptitle(f"class {_plain_text(name)}", fontsize=9, x=0.01, ha="left")
    return _svg(fig)


def curves_figure(curves: dict, auc) -> str:
    plt = _matplotlib()
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(6.4, 2.8))
    xs, ys = zip(*curves["roc"])
    roc.plot(xs, ys, color="#4c72b0", linewidth=1.3)
    roc.plot([0, 1], [0, 1], color="#bbb", linewidth=0.8, linestyle="--")
    roc.set(xlabel="false-positive rate", ylabel="recall", xlim=(0, 1), ylim=(0, 1.02),
            title=f"ROC (AUC {auc:.3f})" if auc is not None else "ROC")
    if curves["precision_recall"]:
        rs, ps = zip(*curves["precision_recall"])
        pr.plot(rs, ps, color="#dd8452", linewidth=1.3)
    pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision-recall")
    fig.tight_layout()
    return _svg(fig)


def _observed(result: dict) -> str:
    """What an expectation observed, in words."""
    res = result.get("result") or {}
    if result.get("exception_info", {}).get("raised_exception"):
        return f"error: {result['exception_info'].get('exception_message')}"
    if "unexpected_count" in res:
        n = res.get("element_count", 0) - res.get("missing_count", 0) if "missing_count" in res else res.get("element_count", 0)
        text = f"{res['unexpected_count']:,} of {n:,} rows unexpected ({percent(res['unexpected_count'] / n) if n else 'n/a'})"
        if res.get("missing_count"):
            text += f"; {res['missing_count']:,} null"
        return text
    if "observed_value" in res:
        value = res["observed_value"]
        if isinstance(value, float):
            return f"{value:.6g}"
        if isinstance(value, list) and len(value) > 12:
            return ", ".join(map(str, value[:12])) + f", ... ({len(value)} in all)"
        return ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return ""


def _expected(config: dict) -> str:
    kw = {k: v for k, v in (config.get("kwargs") or {}).items() if k not in ("column", "batch_id", "result_format")}
    parts = []
    for k, v in kw.items():
        if isinstance(v, list) and len(v) > 10:
            v = ", ".join(map(str, v[:10])) + f", ... ({len(v)})"
        parts.append(f"{k}={v}")
    return "; ".join(parts)


def _examples(result: dict) -> str:
    res = result.get("result") or {}
    ids = [d.get("row_id") for d in res.get("partial_unexpected_index_list") or [] if isinstance(d, dict)]
    values = res.get("partial_unexpected_list") or []
    if ids:
        return ", ".join(f"{i} ({v})" for i, v in list(zip(ids, values))[:5])
    return ", ".join(map(str, values[:5]))


def expectation_rows(validation: dict | None) -> list[dict]:
    if not validation:
        return []
    rows = []
    for r in validation["great_expectations"]["results"]:
        meta = (r.get("meta") or {}).get("poisonguard", {})
        rows.append({
            "success": r["success"],
            "name": meta.get("name", r["expectation_config"]["type"]),
            "scope": meta.get("scope", ""),
            "expected": _expected(r["expectation_config"]),
            "observed": _observed(r),
            "examples": "" if r["success"] else _examples(r),
        })
    rows.sort(key=lambda r: r["success"])  # failures first (stable: the suite's order within each)
    return rows[:MAX_EXPECTATION_ROWS]


def plotted_classes(report: dict) -> list[str]:
    classes = report["classes"]
    order = sorted(classes, key=lambda c: (-classes[c]["flagged"], -classes[c]["rows"], c))
    return order[:MAX_CLASS_PLOTS]


def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("poisonguard.pipelines", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)
    env.filters["pct"] = percent
    env.filters["num"] = lambda v: f"{v:,}" if isinstance(v, int) else (f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v)))
    return env


def render_html(report: dict) -> str:
    """report.html from a screening report."""
    env = _environment()
    members = report["decision"]["members"]
    shown = plotted_classes(report)
    figures = [{"name": c, "svg": class_figure(c, report["classes"][c], report["decision"]["classes"].get(c, {}), members),
                "why": report["decision"]["classes"].get(c, {}).get("why", ""), "rows": report["classes"][c]["rows"],
                "flagged": report["classes"][c]["flagged"]} for c in shown]
    others = [{"name": c, "rows": report["classes"][c]["rows"], "flagged": report["classes"][c]["flagged"],
               "why": report["decision"]["classes"].get(c, {}).get("why", "")} for c in report["classes"] if c not in set(shown)]
    detection = report.get("detection")
    curves = None
    if detection and detection.get("curves"):
        curves = curves_figure(detection["curves"], detection.get("roc_auc"))
    patterns = [{"class": c, **rule} for d in report["detectors"] for c, facts in d["classes"].items() for rule in facts.get("patterns", [])]
    counts = report["counts"]
    n = max(counts["rows_in"], 1)
    text = env.get_template(_TEMPLATE).render(
        report=report, counts=counts, n=n, figures=figures, others=others, other_classes=report.get("other_classes"), curves=curves, detection=detection,
        expectations=expectation_rows(report.get("validation")), validation=report.get("validation"),
        policy=report["policy"], members=members, max_class_plots=MAX_CLASS_PLOTS, patterns=patterns,
    )
    return text


_EXTERNAL = re.compile(r"""(?:\b(?:src|href|xlink:href|action|poster|data)\s*=\s*["']?\s*(?:https?:)?//)|(?:url\(\s*["']?\s*(?:https?:)?//)""",
                       re.IGNORECASE)


def external_references(text: str) -> list[str]:
    """Attributes or CSS in ``text`` that would make a browser fetch something from elsewhere (our pages have none)."""
    return [text[max(m.start() - 20, 0):m.end() + 40] for m in _EXTERNAL.finditer(text)]


def write_html_report(report: dict, path: str) -> int:
    """Render ``report`` to ``path`` atomically; returns the size in bytes."""
    return write_text(render_html(report), path)


def balance_figure(classes: dict) -> str:
    """Rows per class before and after the attacks (the largest classes, at most MAX_BALANCE_CLASSES)."""
    plt = _matplotlib()
    names = sorted(classes, key=lambda c: (-max(classes[c]["before"], classes[c]["after"]), c))[:MAX_BALANCE_CLASSES]
    fig, ax = plt.subplots(figsize=(min(1.0 + 0.45 * len(names), 12), 2.6))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [classes[c]["before"] for c in names], width=0.4, color="#8c8c8c", label="before")
    ax.bar([x + 0.2 for x in xs], [classes[c]["after"] for c in names], width=0.4, color="#c44e52", label="after")
    ax.set_xticks(list(xs), [_plain_text(str(c)[:14]) for c in names], rotation=45 if len(names) > 8 else 0, ha="right" if len(names) > 8 else "center")
    ax.set_ylabel("rows")
    ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return _svg(fig)


def render_manifest_html(manifest: dict) -> str:
    """manifest.html from a simulate manifest: the attacks, the rows each touched, the class balance before and after."""
    classes = manifest.get("classes") or {}
    return _environment().get_template("manifest.html.j2").render(
        m=manifest, counts=manifest["counts"], classes=classes, balance=balance_figure(classes) if classes else None,
        max_balance=MAX_BALANCE_CLASSES)


def write_manifest_html(manifest: dict, path: str) -> int:
    """Render ``manifest`` to ``path`` atomically; returns the size in bytes."""
    return write_text(render_manifest_html(manifest), path)
