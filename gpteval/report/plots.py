"""plots/*.png: pareto (speed vs quality), latency (decode-step distributions), memory (bars).

matplotlib is imported inside the functions (importing gpteval stays fast) and used through
`Figure` + the Agg canvas, never pyplot, so no global backend or figure state is touched.
PNGs carry no Software/date metadata and matplotlib's defaults are forced, so the same
results give the same bytes on the same matplotlib version.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

from gpteval.report import results as R
from gpteval.report.verdict import QualityBudget, summary_rows

_PANEL = (6.0, 4.0)  # inches per (model, device) panel
_DPI = 100


def _groups(results: dict) -> list[tuple[str, str, list[dict]]]:
    """(model, device, ok entries) for every model × device that has an ok result."""
    entries = [e for e in results["results"] if e["status"] == "ok"]
    out = []
    for model in R.order_of_appearance(e["model"] for e in entries):
        for device in R.order_of_appearance(e["device"] for e in entries if e["model"] == model):
            group = [e for e in entries if e["model"] == model and e["device"] == device]
            out.append((model, device, group))
    return out


def _title(model: str, device: str, entries: list[dict]) -> str:
    """'model on device', and the batch size the speeds are at when the run measured several."""
    if not R.several_batches(entries):
        return f"{model} on {device}"
    return f"{model} on {device}, batch {' or '.join(map(str, R.primary_batches(entries)))}"


def _figure(n_panels: int, width_scale: float = 1.0):
    """(fig, axes) with one panel per group, two per row."""
    from matplotlib.figure import Figure

    n = max(n_panels, 1)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(_PANEL[0] * cols * width_scale, _PANEL[1] * rows), dpi=_DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_axis_off()
    return fig, axes


def _save(fig, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return R.write_bytes_atomic(path, buf.getvalue())


def _empty(fig, axes, text: str) -> None:
    axes[0].set_axis_off()
    axes[0].text(0.5, 0.5, text, ha="center", va="center", transform=axes[0].transAxes)


def pareto_points(results: dict, budget: QualityBudget | None = None) -> dict:
    """(model, device) -> (x axis name, [(variant, quality cost x, decode tok/s, verdict, recommended)]).
    x is ppl Δ % vs eager when perplexity was measured in that group, else KL mean (eager = 0)."""
    rows = [r for r in summary_rows(results, budget)
            if r["status"] == "ok" and r["decode_tok_s"] is not None]
    out = {}
    for model, device, _ in _groups(results):
        group = [r for r in rows if r["model"] == model and r["device"] == device]
        use_ppl = any(r["ppl_delta_pct"] is not None for r in group if r["variant"] != R.REFERENCE_VARIANT)
        axis, field = (("ppl Δ % vs eager", "ppl_delta_pct") if use_ppl
                       else ("KL(eager ‖ variant), nats", "kl_mean"))
        points = []
        for r in group:
            x = r[field]
            if x is None and r["variant"] == R.REFERENCE_VARIANT:
                x = 0.0
            if x is not None:
                points.append((r["variant"], x, r["decode_tok_s"], r["verdict"], r["recommended"]))
        out[(model, device)] = (axis, points)
    return out


def pareto_front(points: list[tuple]) -> list[tuple]:
    """Points not dominated by another (lower quality cost and higher speed), sorted by cost."""
    front, best = [], -math.inf
    for p in sorted(points, key=lambda p: (p[1], -p[2], p[0])):
        if p[2] > best:
            front.append(p)
            best = p[2]
    return front


def label_offsets(xy: list[tuple[float, float]], near: float = 0.06, step: float = 10.0) -> list[float]:
    """Vertical offsets (points) for the labels of points xy: a point within `near` of
    another's place (as a fraction of the axis spans) gets its label a step lower than the
    lowest one there, so that labels of close points (variants of equal quality and speed)
    do not print over each other."""
    xs, ys = [p[0] for p in xy], [p[1] for p in xy]
    span_x = ((max(xs) - min(xs)) or 1.0) if xy else 1.0  # one point, or all in a line
    span_y = ((max(ys) - min(ys)) or 1.0) if xy else 1.0
    placed: list[tuple[float, float, float]] = []
    out = []
    for x, y in xy:
        crowd = [dy for px, py, dy in placed
                 if abs(px - x) / span_x < near and abs(py - y) / span_y < near]
        dy = min(crowd) - step if crowd else 4.0
        placed.append((x, y, dy))
        out.append(dy)
    return out


def plot_pareto(results: dict, path: Path, budget: QualityBudget | None = None) -> Path:
    data = pareto_points(results, budget)
    fig, axes = _figure(len(data))
    if not data:
        _empty(fig, axes, "no variant with both speed and quality")
    colors = {"reference": "tab:blue", "accepted": "tab:green", "rejected": "tab:red",
              "unjudged": "tab:gray"}
    groups = {(m, d): es for m, d, es in _groups(results)}
    for ax, ((model, device), (axis, points)) in zip(axes, data.items()):
        offsets = label_offsets([(x, y) for _, x, y, _, _ in points])
        for (variant, x, y, verdict, recommended), dy in zip(points, offsets):
            ax.scatter([x], [y], s=140 if recommended else 50, marker="*" if recommended else "o",
                       color=colors.get(verdict, "tab:gray"), zorder=3)
            ax.annotate(variant, (x, y), textcoords="offset points", xytext=(5, dy), fontsize=8)
        front = pareto_front(points)
        if len(front) > 1:
            ax.plot([p[1] for p in front], [p[2] for p in front], color="0.5", linestyle="--", zorder=2)
        ax.margins(x=0.15, y=0.1)  # room for the labels of the outermost points
        ax.set_title(_title(model, device, groups[(model, device)]))
        ax.set_xlabel(f"quality cost: {axis} (lower is better)")
        ax.set_ylabel("decode tok/s (higher is better)")
        ax.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_latency(results: dict, path: Path) -> Path:
    groups = [(m, d, [e for e in es if R.samples(e, "decode_step_ms")]) for m, d, es in _groups(results)]
    groups = [g for g in groups if g[2]]
    tallest = max((len(es) for _, _, es in groups), default=1)
    fig, axes = _figure(len(groups))
    fig.set_figheight(max(_PANEL[1], 0.45 * tallest + 1.5) * math.ceil(max(len(groups), 1) / 2))
    if not groups:
        _empty(fig, axes, "no decode-step samples recorded")
    for ax, (model, device, entries) in zip(axes, groups):
        # slowest first: a horizontal boxplot stacks upwards, so the fastest ends on top
        entries = sorted(entries, key=lambda e: (R.metric(e, "decode_tok_s") or 0.0, e["variant"]))
        boxes = [R.samples(e, "decode_step_ms") for e in entries]
        # `orientation=` replaced `vert=` in matplotlib 3.10; support both
        new_api = "orientation" in inspect.signature(ax.boxplot).parameters
        kw = {"orientation": "horizontal"} if new_api else {"vert": False}
        ax.boxplot(boxes, flierprops={"markersize": 2}, **kw)
        # log: variants an order of magnitude apart, and a host's stray 50 ms step, would
        # leave the fast variants' boxes a few pixels wide on a linear axis
        ax.set_xscale("log")
        ax.set_yticks(range(1, len(entries) + 1), [e["variant"] for e in entries])
        ax.set_title(_title(model, device, entries))
        ax.set_xlabel("decode step ms, log scale (lower is better)")
        ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)


def plot_memory(results: dict, path: Path) -> Path:
    groups = _groups(results)
    fig, axes = _figure(len(groups))
    if not groups:
        _empty(fig, axes, "no ok results")
    for ax, (model, device, entries) in zip(axes, groups):
        names = [e["variant"] for e in entries]
        ys = range(len(entries))
        rss = [R.metric(e, "peak_rss_mb") or 0.0 for e in entries]
        weights = [R.metric(e, "weights_mb") or 0.0 for e in entries]
        ax.barh([y - 0.2 for y in ys], rss, height=0.4, label="peak RSS MB", color="tab:blue")
        ax.barh([y + 0.2 for y in ys], weights, height=0.4, label="weights MB", color="tab:orange")
        ax.set_xlim(0, max(rss + weights + [1.0]) * 1.5)  # room on the right for the legend
        ax.set_yticks(list(ys), names)
        ax.invert_yaxis()
        ax.set_title(f"{model} on {device}")
        ax.set_xlabel("MB (lower is better)")
        ax.legend(loc="upper right", fontsize=8)
        ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)


def write_plots(results: dict, out_dir: Path, budget: QualityBudget | None = None) -> list[Path]:
    """Write pareto.png, latency.png and memory.png under out_dir with matplotlib's defaults."""
    import matplotlib

    out_dir = Path(out_dir)
    with matplotlib.rc_context():
        matplotlib.rcdefaults()  # a user's matplotlibrc must not change the report's bytes
        return [plot_pareto(results, out_dir / "pareto.png", budget),
                plot_latency(results, out_dir / "latency.png"),
                plot_memory(results, out_dir / "memory.png")]
