"""What ``guardkit eval`` writes besides ``samples.csv``: the summary (mean +- std per method and
purification), ``summary.json`` and ``report.html`` (the table, one bar chart per metric, an image grid, the
failed inputs).

Each metric's statistics leave out NaN (no score) only. An infinity is a score (the PSNR of an unchanged image):
it is averaged in, so the mean is inf when any value is (NaN when both signs are), and counted in ``n_inf``;
the tables then show ``inf (k of n inf)`` rather than a mean of the finite values alone."""

from __future__ import annotations

import html
import json
import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from guardkit.evaluate import EvalConfig


def slug(text: str) -> str:
    """``text`` as one safe path component (the cache's folder and file names)."""
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in text.strip())
    return keep[:80] or "_"


def metric_stat(values: Sequence[float]) -> dict[str, Any]:
    """mean, std, n (the values averaged: all but NaN) and n_inf (how many of them are infinite) of one metric;
    with an infinity the mean is inf (NaN when both signs occur) and the std NaN."""
    kept = [v for v in values if not math.isnan(v)]
    infinite = sum(math.isinf(v) for v in kept)
    mean = statistics.fmean(kept) if kept else math.nan
    std = math.nan if not kept or infinite else statistics.pstdev(kept) if len(kept) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(kept), "n_inf": infinite}


def summarise(rows: list[dict[str, Any]], metric_names: Sequence[str]) -> list[dict[str, Any]]:
    """Per (method, purify): ``n`` rows and every metric's ``metric_stat``."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["purify"]), []).append(row)
    out = []
    for (method, purify), members in groups.items():
        entry: dict[str, Any] = {"method": method, "purify": purify, "n": len(members)}
        for name in metric_names:
            entry[name] = metric_stat([r[name] for r in members if isinstance(r.get(name), float)])
        out.append(entry)
    return out


def stat_text(stat: dict[str, Any], rows: int) -> str:
    """One table cell: ``mean ± std``, with ``(n=k)`` where fewer than the group's ``rows`` values were averaged;
    ``inf (k of n inf)`` where values were infinite; ``-`` where none was scored."""
    if not stat["n"]:
        return "-"
    if stat.get("n_inf"):
        return f"{stat['mean']:g} ({stat['n_inf']} of {stat['n']} inf)"
    text = f"{stat['mean']:.3f} ± {stat['std']:.3f}"
    return text if stat["n"] == rows else f"{text} (n={stat['n']})"


def write_summary(out: Path, summary: list[dict[str, Any]], unavailable: dict[str, str], notes: dict[str, Any]) -> Path:
    """``summary.json``: the summary, what was unavailable, and the notes (attacked models, FR alignment, target,
    failed inputs)."""
    path = out / "summary.json"
    path.write_text(json.dumps({"summary": summary, "unavailable": unavailable, **notes}, indent=2,
                               default=_json_float))
    return path


def _json_float(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else str(value)


def write_report(out: Path, summary: list[dict[str, Any]], metric_names: Sequence[str], config: "EvalConfig",
                 notes: dict[str, Any] | None = None) -> Path:
    """``report.html``: the summary table, one bar chart per metric (inline SVG), and an image grid."""
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metric_names)
    body = "".join(
        f"<tr><td>{html.escape(s['method'])}</td><td>{html.escape(s['purify'])}</td><td>{s['n']}</td>"
        + "".join(f"<td>{html.escape(stat_text(s[m], s['n']))}</td>" for m in metric_names) + "</tr>" for s in summary)
    charts = "".join(_bar_chart(name, [(f"{s['method']}/{s['purify']}", s[name]["mean"]) for s in summary])
                     for name in metric_names)
    grid = []
    images = out / "images"
    for source in sorted((images / "source").glob("*.png"))[:12]:
        stem = source.stem
        cells = [("source", source)]
        for method in config.methods:
            cells.append((f"protected: {method}", images / "protected" / slug(method) / f"{stem}.png"))
        edits = sorted((images / "edits" / "clean" / stem).rglob("*.png"))[:1]
        for edit in edits:
            cells.append(("edited clean", edit))
            rel = edit.relative_to(images / "edits" / "clean")
            for method in config.methods:
                for spec in config.purify:
                    cells.append((f"edited {method}/{spec}", images / "edits" / slug(method) / slug(spec) / rel))
        row = "".join(f"<figure><img src='{html.escape(str(p.relative_to(out)))}'><figcaption>{html.escape(t)}"
                      f"</figcaption></figure>" for t, p in cells if p.exists())
        grid.append(f"<div class='row'>{row}</div>")
    page = f"""<!doctype html><html><head><meta charset='utf-8'><title>guardkit eval</title><style>
body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px}}
.row{{display:flex;gap:8px;flex-wrap:wrap;margin-bottom:12px}} figure{{margin:0}} img{{width:160px}}
figcaption{{font-size:11px;max-width:160px}}</style></head><body>
<h1>guardkit evaluation</h1><p>editor: {html.escape(config.editor)}; prompts: {len(config.prompts)};
seeds: {len(config.seeds)}; face models: {html.escape(', '.join(config.face_models))}</p>
{_notes_html(notes or {})}
<table><tr><th>method</th><th>purify</th><th>n</th>{head}</tr>{body}</table>
<h2>Charts</h2>{charts}<h2>Images</h2>{''.join(grid)}</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path


def _notes_html(notes: dict[str, Any]) -> str:
    """Which face models each method attacked, how FR aligned the edits, the impersonation target, the failed
    inputs (one line each)."""
    items = []
    if notes.get("attacked"):
        items.append("attacked face models: " + "; ".join(
            f"{m}: {', '.join(models) or 'none'}" for m, models in notes["attacked"].items()))
    if notes.get("fr_alignment"):
        items.append(f"FR alignment: {notes['fr_alignment']}")
    if notes.get("target_identity"):
        items.append(f"impersonation target: {notes['target_identity']}")
    items += [f"failed: {line}" for line in notes.get("failed") or ()]
    return "".join(f"<p class='note'>{html.escape(item)}</p>" for item in items)


def _bar_chart(title: str, bars: list[tuple[str, float]]) -> str:
    finite = [v for _, v in bars if math.isfinite(v)]
    if not finite:
        return ""
    top = max(abs(v) for v in finite) or 1.0
    height = 22 * len(bars) + 30
    rects = []
    for i, (label, value) in enumerate(bars):
        width = 0 if not math.isfinite(value) else 300 * abs(value) / top
        y = 25 + 22 * i
        rects.append(f"<text x='0' y='{y + 14}' font-size='11'>{html.escape(label)}</text>"
                     f"<rect x='180' y='{y}' width='{width:.1f}' height='16' fill='#4a7'/>"
                     f"<text x='{185 + width:.1f}' y='{y + 13}' font-size='11'>{value:.3f}</text>")
    return (f"<svg width='560' height='{height}'><text x='0' y='14' font-weight='bold'>{html.escape(title)}</text>"
            f"{''.join(rects)}</svg>")
