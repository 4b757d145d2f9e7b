"""Summaries over seeds, plain-text and Markdown tables, and the comparison plots (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any


def mean_std(values: Iterable[float | None]) -> tuple[float, float | None, int]:
    """(mean, sample standard deviation with n - 1, n) over the finite values; std is None for fewer than two.
    With no finite value the mean is nan."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return math.nan, None, 0
    mean = sum(xs) / n
    if n < 2:
        return mean, None, n
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)), n


def fmt_mean_std(values: Iterable[float | None], digits: int = 4, scale: float = 1.0) -> str:
    """'0.8125 ± 0.0125' (sample std over seeds), '0.8125' for one value, '—' for none."""
    mean, std, n = mean_std(values)
    if n == 0:
        return "—"
    if std is None:
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def column(rows: Sequence[dict[str, Any]]) -> Callable[[str], list[Any]]:
    """col(key): that key's value in every row (None where a row lacks it)."""
    return lambda key: [r.get(key) for r in rows]


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A fixed-width table for the terminal."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_cell(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


# -- plots -------------------------------------------------------------------------------------------------------------
def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def smooth(ys: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what exists so far)."""
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= window:
            acc -= ys[i - window]
        out.append(acc / min(i + 1, window))
    return out


def average_curves(curves: Sequence[Sequence[tuple[float, float, float]]]) -> list[tuple[float, float, float, float]]:
    """Curves of (step, seconds, value) per seed -> (step, mean seconds, mean value, std value) at the steps all
    seeds share."""
    if not curves:
        return []
    common = set.intersection(*({p[0] for p in c} for c in curves))
    out = []
    for step in sorted(common):
        pts = [next(p for p in c if p[0] == step) for c in curves]
        secs = sum(p[1] for p in pts) / len(pts)
        mean, std, _ = mean_std(p[2] for p in pts)
        out.append((step, secs, mean, std or 0.0))
    return out


_DASHES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "D", "^", "v", "<", ">", "P", "X", "*")


def line_styles(methods: Sequence[str], colors: Sequence[str]) -> dict[str, tuple[str, str, str]]:
    """method -> (colour, dash pattern, marker), fixed by first appearance; distinct for up to 10 methods."""
    names = list(dict.fromkeys(methods))
    return {m: (colors[i % len(colors)], _DASHES[i % len(_DASHES)], _MARKERS[i % len(_MARKERS)])
            for i, m in enumerate(names)}  # fmt: skip


def plot_curves(
    path: Path,
    title: str,
    dev: dict[str, Sequence[Sequence[tuple[float, float, float]]]],
    loss: dict[str, Sequence[Sequence[tuple[float, float, float]]]],
    *,
    target: float | None = None,
    smooth_window: int = 1,
    share: dict[str, Sequence[Sequence[tuple[float, float, float]]]] | None = None,
) -> Path:
    """One PNG with four panels, one line per method (mean over seeds, band = ± std): dev accuracy and training
    loss, each against steps and against training seconds. With `share` (per method and seed: (step, cumulative
    loss change from the ZO update, from the FO update) at probe steps) a third row: the ZO share of the loss
    decrease, and both cumulative changes, against steps."""
    plt = pyplot()
    rows = 3 if share else 2
    fig, axes = plt.subplots(rows, 2, figsize=(13, 4 * rows))
    panels = [(dev, "dev accuracy", 0), (loss, "training loss", 1)]
    # Methods that learn the same thing (e.g. hybrid at a tiny ZO lr and its FO-PEFT twin) draw on top of each
    # other: a fixed colour, dash pattern and marker per method keeps every line findable.
    style = line_styles([*dev, *loss], plt.rcParams["axes.prop_cycle"].by_key()["color"])
    for data, ylabel, row in panels:
        for col, xlabel in enumerate(("steps", "training seconds")):
            ax = axes[row][col]
            for method, curves in data.items():
                pts = average_curves(curves)
                if not pts:
                    continue
                xs = [p[col] for p in pts]
                ys = [p[2] for p in pts]
                sd = [p[3] for p in pts]
                if row == 1 and smooth_window > 1:
                    ys, sd = smooth(ys, smooth_window), smooth(sd, smooth_window)
                color, dash, marker = style[method]
                ax.plot(xs, ys, label=method, color=color, linestyle=dash,
                        marker=marker if row == 0 else None, markersize=4, linewidth=1.4)  # fmt: skip
                ax.fill_between(xs, [y - s for y, s in zip(ys, sd)], [y + s for y, s in zip(ys, sd)],
                                color=color, alpha=0.15, linewidth=0)  # fmt: skip
            if row == 0 and target is not None:
                ax.axhline(target, color="grey", linestyle="--", linewidth=1, label="target")
            ax.set_xlabel(xlabel)
            ylab = ylabel if row == 0 or smooth_window <= 1 else f"{ylabel} (moving average of {smooth_window} steps)"
            ax.set_ylabel(ylab)
            ax.grid(alpha=0.3)
    if share:
        _share_panels(axes[2], share, style)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.87, 1))
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def _share_panels(axes, share, style) -> None:
    """Probe rows: ZO share cum_zo / (cum_zo + cum_fo) of the probe-batch loss change, and both cumulative changes."""
    for method, runs in share.items():
        color, dash, marker = style.get(method, ("black", "-", "o"))
        frac = [[(s, s, z / (z + f) if z + f else float("nan")) for s, z, f in run] for run in runs]
        pts = average_curves(frac)
        axes[0].plot([p[0] for p in pts], [p[2] for p in pts], label=method, color=color, linestyle=dash,
                     marker=marker, markersize=4)  # fmt: skip
        for idx, (name, ls) in enumerate((("ZO", "-"), ("FO", ":"))):
            pts = average_curves([[(s, s, (z, f)[idx]) for s, z, f in run] for run in runs])
            axes[1].plot([p[0] for p in pts], [p[2] for p in pts], color=color, linestyle=ls, marker=marker,
                         markersize=3, label=f"{method} {name}")  # fmt: skip
    axes[0].set_xlabel("steps")
    axes[0].set_ylabel("ZO share of the probe-batch loss change")
    axes[1].set_xlabel("steps")
    axes[1].set_ylabel("cumulative loss change on the probe batch (solid ZO, dotted FO)")
    axes[1].legend(fontsize=6)
    for ax in axes:
        ax.grid(alpha=0.3)


def save_figure(fig, path: Path, **kwargs) -> None:
    """savefig to a temporary file, then os.replace: a kill mid-write never leaves a torn image."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, **kwargs)
    os.replace(tmp, path)
