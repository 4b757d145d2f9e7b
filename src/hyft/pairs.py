"""Each hybrid cell of a comparison set against its first-order twin, paired.

A hybrid cell (base weights by ZO, PEFT module by backprop) and its twin (the same PEFT module by backprop on a
frozen base) that share the task, the seed and every other setting see the same batches in the same order from the
same adapter initialisation, so what differs between them is the ZO half's doing. Paired statistics read that far
more sharply than means over seeds: the training-loss difference on identical batches, and on a split the examples
one run gets right and the other wrong, tested with McNemar's exact test (two-sided binomial on the discordant
examples). The twin is found by structure (hyft.methods: base zo vs frozen, the same PEFT module trained by
backprop, configs equal once the ZO settings and the output folder are set aside), not by name. Unfinished cells
are compared up to the last step both reached, so a running study can be read (`hyft compare --progress`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from hyft.config import from_dict
from hyft.errors import ConfigError
from hyft.methods import Method, resolve
from hyft.study_files import csv_text, read_curve, write_atomic

PAIR_FIELDS = [
    "task", "seed", "hybrid", "twin", "state", "steps_hybrid", "steps_twin",
    "dev_step", "dev_hybrid", "dev_twin", "dev_diff", "dev_hybrid_only", "dev_twin_only", "dev_p",
    "test_hybrid", "test_twin", "test_diff", "test_hybrid_only", "test_twin_only", "test_p",
    "loss_steps", "loss_hybrid", "loss_twin", "loss_diff", "loss_hybrid_lower", "time_ratio", "memory_ratio",
    "ablation_dev_points", "ablation_test_points", "dev_diffs", "loss_diffs",
]  # fmt: skip
_ZO_ONLY = ("method", "base", "adapter_train", "zo")  # what a hybrid sets that its twin has no use for


class Cell(Protocol):
    """What a pair needs of a comparison's cell (hyft.compare.Cell)."""

    task: str
    method: str
    seed: int
    dir: Path
    config: dict[str, Any]

    @property
    def done(self) -> bool: ...

    @property
    def key(self) -> str: ...


def _shape(cell: Cell) -> tuple[Method, dict[str, Any]] | None:
    """The cell's resolved method and its config without the ZO-only settings and the output folder."""
    try:
        cfg = from_dict(cell.config)
        method = resolve(cfg)
    except ConfigError:
        return None
    d = cfg.to_dict()
    for key in _ZO_ONLY:
        d.pop(key, None)
    d["peft"] = {**d["peft"], "type": method.peft}
    d["train"] = {k: v for k, v in d["train"].items() if k != "output_dir"}
    return method, d


def find_pairs(cells: Sequence[Cell]) -> list[tuple[Cell, Cell]]:
    """(hybrid, twin) for every hybrid cell that has a twin among `cells` (the first one, in cell order)."""
    shapes = {c.key: _shape(c) for c in cells}
    out = []
    for h in cells:
        sh = shapes[h.key]
        if sh is None or not (sh[0].base == "zo" and sh[0].peft != "none" and sh[0].adapter == "fo"):
            continue
        for t in cells:
            st = shapes[t.key]
            if st is None or (t.task, t.seed) != (h.task, h.seed):
                continue
            if (st[0].base, st[0].peft, st[0].adapter) == ("frozen", sh[0].peft, "fo") and st[1] == sh[1]:
                out.append((h, t))
                break
    return out


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar test: 2·P(X ≤ min(b, c)) for X ~ Binomial(b + c, 1/2), at most 1. b and c count the
    examples only the first / only the second run got right."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def discordant(a: str, b: str) -> tuple[int, int]:
    """(right only in a, right only in b) over two per-example '0'/'1' strings of the same examples."""
    if len(a) != len(b):
        raise ValueError(f"per-example results of different lengths ({len(a)} vs {len(b)})")
    return sum(x == "1" and y == "0" for x, y in zip(a, b)), sum(x == "0" and y == "1" for x, y in zip(a, b))


def _run(cell: Cell) -> dict[str, Any] | None:
    return json.loads((cell.dir / "run.json").read_text(encoding="utf-8")) if cell.done else None


def _evals(curve: list[dict[str, Any]], split: str, final_step: int | None) -> dict[int, dict[str, Any]]:
    """Evaluations of a split by step; dev's final one (after the last step) replaces a periodic one at that step."""
    return {r["step"]: r for r in curve if r.get("split") == split and (split == "dev" or r["step"] == final_step)}


def _losses(curve: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The applied steps' loss records by step."""
    return {r["step"]: r for r in curve if "loss" in r and r.get("applied", True)}


def _split(row: dict[str, Any], prefix: str, h: dict[str, Any] | None, t: dict[str, Any] | None) -> None:
    if h is None or t is None:
        return
    row[f"{prefix}_hybrid"], row[f"{prefix}_twin"] = h["value"], t["value"]
    row[f"{prefix}_diff"] = round(h["value"] - t["value"], 6)
    if h.get("correct") is not None and t.get("correct") is not None and len(h["correct"]) == len(t["correct"]):
        b, c = discordant(h["correct"], t["correct"])
        row[f"{prefix}_hybrid_only"], row[f"{prefix}_twin_only"] = b, c
        row[f"{prefix}_p"] = round(mcnemar_p(b, c), 6)


def pair_row(h: Cell, t: Cell, ch: list[dict[str, Any]], ct: list[dict[str, Any]]) -> dict[str, Any]:
    """The paired comparison of hybrid cell h with its twin t (curves ch, ct), over what both have done so far."""
    rh, rt = _run(h), _run(t)
    lh, lt = _losses(ch), _losses(ct)
    row: dict[str, Any] = {
        "task": h.task, "seed": h.seed, "hybrid": h.method, "twin": t.method,
        "state": "done" if rh and rt else "running",
        "steps_hybrid": max(lh, default=0), "steps_twin": max(lt, default=0),
    }  # fmt: skip
    done_h, done_t = (int(r["steps"]) if r else None for r in (rh, rt))
    dh, dt = _evals(ch, "dev", done_h), _evals(ct, "dev", done_t)
    common = sorted(set(dh) & set(dt))
    if common:
        row["dev_step"] = common[-1]
        _split(row, "dev", dh[common[-1]], dt[common[-1]])
        row["dev_diffs"] = " ".join(f"{s}:{dh[s]['value'] - dt[s]['value']:+.3f}" for s in common)
    if rh and rt and done_h == done_t:
        _split(row, "test", _evals(ch, "test", done_h).get(done_h), _evals(ct, "test", done_t).get(done_t))
    steps = sorted(set(lh) & set(lt))
    if steps:
        last = steps[-max(10, len(steps) // 10) :]  # the last tenth (at least 10 steps) of what both ran
        row["loss_steps"] = f"{last[0]}-{last[-1]}"
        row["loss_hybrid"] = round(sum(lh[s]["loss"] for s in last) / len(last), 6)
        row["loss_twin"] = round(sum(lt[s]["loss"] for s in last) / len(last), 6)
        row["loss_diff"] = round(row["loss_hybrid"] - row["loss_twin"], 6)
        lower = sum(lh[s]["loss"] < lt[s]["loss"] for s in last)
        higher = sum(lh[s]["loss"] > lt[s]["loss"] for s in last)
        row["loss_hybrid_lower"] = round(lower / (lower + higher), 4) if lower + higher else None
        k = max(1, len(steps) // 10)  # the same difference over each tenth of the common steps: when they part
        row["loss_diffs"] = " ".join(
            f"{w[0]}-{w[-1]}:{sum(lh[s]['loss'] - lt[s]['loss'] for s in w) / len(w):+.4f}"
            for w in (steps[i : i + k] for i in range(0, len(steps), k))
        )
        s = steps[-1]
        if lt[s]["train_s"] > 0:
            row["time_ratio"] = round(lh[s]["train_s"] / lt[s]["train_s"], 3)
    if rh and rt and rt.get("peak_memory_bytes"):
        row["memory_ratio"] = round(rh["peak_memory_bytes"] / rt["peak_memory_bytes"], 3)
    abl = (rh or {}).get("ablation") or {}
    for split in ("dev", "test"):
        row[f"ablation_{split}_points"] = (abl.get(split) or {}).get("zo_points")
    return row


def _fmt(v: Any, digits: int = 3, sign: bool = False) -> str:
    if v is None:
        return "—"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _split_cell(r: dict[str, Any], prefix: str) -> str:
    if r.get(f"{prefix}_hybrid") is None:
        return "—"
    text = f"{r[f'{prefix}_hybrid']:.3f} / {r[f'{prefix}_twin']:.3f} ({r[f'{prefix}_diff']:+.3f})"
    if r.get(f"{prefix}_p") is not None:
        text += f"; {r[f'{prefix}_hybrid_only']}/{r[f'{prefix}_twin_only']}, p {r[f'{prefix}_p']:.2g}"
    return text


def markdown(tasks: Sequence[str], rows: list[dict[str, Any]]) -> str:
    from hyft.report import column, fmt_mean_std, markdown_table

    lines = [
        "# Hybrid against its FO twin, paired", "",
        "Same task, seed, data order and adapter initialisation; the twin trains the same PEFT module on a frozen",
        "base. dev / test: hybrid / twin (hybrid − twin); then examples right only in the hybrid / only in the twin",
        "and McNemar's exact two-sided p. Loss: mean training loss over the last tenth of the steps both ran",
        "(identical batches), hybrid − twin, and the share of those steps where the hybrid's was lower. Time: hybrid",
        "÷ twin training seconds over those steps. Ablation: the hybrid's trained PEFT module on its ZO-updated base",
        "minus on the original base, in points (positive: ZO helped).", "",
    ]  # fmt: skip
    headers = ["hybrid vs twin", "seed", "state (steps h / t)", "dev step", "dev", "test", "loss diff (steps)",
               "time ×", "ablation dev / test"]  # fmt: skip
    for task in tasks:
        rs = [r for r in rows if r["task"] == task]
        if not rs:
            continue
        table = []
        for r in rs:
            table.append([
                f"{r['hybrid']} vs {r['twin']}", r["seed"], f"{r['state']} ({r['steps_hybrid']} / {r['steps_twin']})",
                r.get("dev_step", "—"), _split_cell(r, "dev"), _split_cell(r, "test"),
                f"{_fmt(r.get('loss_diff'), 4, True)} ({r.get('loss_steps', '—')}; lower in "
                f"{_fmt(r.get('loss_hybrid_lower'), 2)})", _fmt(r.get("time_ratio"), 2),
                f"{_fmt(r.get('ablation_dev_points'), 2, True)} / {_fmt(r.get('ablation_test_points'), 2, True)}",
            ])  # fmt: skip
        for hybrid, twin in dict.fromkeys((r["hybrid"], r["twin"]) for r in rs):
            group = [r for r in rs if (r["hybrid"], r["twin"]) == (hybrid, twin)]
            if len(group) < 2:
                continue
            col = column(group)
            table.append([
                f"**{hybrid} vs {twin}: mean ± std of the differences**", f"{len(group)} seeds", "", "",
                fmt_mean_std(col("dev_diff"), 3), fmt_mean_std(col("test_diff"), 3), fmt_mean_std(col("loss_diff"), 4),
                fmt_mean_std(col("time_ratio"), 2),
                f"{fmt_mean_std(col('ablation_dev_points'), 2)} / {fmt_mean_std(col('ablation_test_points'), 2)}",
            ])  # fmt: skip
        lines += [f"## {task}", "", markdown_table(headers, table), ""]
        lines += ["Dev difference (hybrid − twin) at every evaluation both reached:", ""]
        lines += [f"- {r['hybrid']} vs {r['twin']}, seed {r['seed']}: {r.get('dev_diffs', '—')}" for r in rs] + [""]
        lines += ["Training-loss difference (hybrid − twin, same batches) over each tenth of the steps both ran:", ""]
        lines += [f"- {r['hybrid']} vs {r['twin']}, seed {r['seed']}: {r.get('loss_diffs', '—')}" for r in rs] + [""]
    if not rows:
        lines += ["No hybrid cell has an FO twin in this comparison.", ""]
    return "\n".join(lines)


def plot(path: Path, task: str, pairs: list[tuple[Cell, Cell, list[dict[str, Any]], list[dict[str, Any]]]]) -> Path:
    """Three panels over steps, one colour per pair: dev accuracy of both (twin solid, hybrid dashed), the dev
    difference, and the training-loss difference on identical batches (moving average)."""
    from hyft.report import pyplot, save_figure, smooth

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (h, t, ch, ct) in enumerate(pairs):
        color, label = colors[i % len(colors)], f"{h.method} vs {t.method} s{h.seed}"
        dh = {s: r["value"] for s, r in _evals(ch, "dev", None).items()}
        dt = {s: r["value"] for s, r in _evals(ct, "dev", None).items()}
        for d, dash, marker, who in ((dt, "-", "o", "twin"), (dh, "--", "s", "hybrid")):
            xs = sorted(d)
            axes[0].plot(xs, [d[s] for s in xs], color=color, linestyle=dash, marker=marker, markersize=3,
                         label=f"{label}: {who}")  # fmt: skip
        common = sorted(set(dh) & set(dt))
        axes[1].plot(common, [dh[s] - dt[s] for s in common], color=color, marker="o", markersize=3, label=label)
        lh, lt = _losses(ch), _losses(ct)
        steps = sorted(set(lh) & set(lt))
        window = max(1, len(steps) // 20)
        axes[2].plot(steps, smooth([lh[s]["loss"] - lt[s]["loss"] for s in steps], window), color=color, label=label)
    for ax, ylabel in zip(axes, ("dev accuracy", "dev accuracy, hybrid − twin", "training loss, hybrid − twin")):
        ax.set_xlabel("steps")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[1].axhline(0, color="grey", linewidth=1)
    axes[2].axhline(0, color="grey", linewidth=1)
    axes[2].set_ylabel("training loss, hybrid − twin (moving avg.)")
    axes[0].legend(fontsize=6)
    fig.suptitle(f"{task}: each hybrid against its FO twin (same seed and batches)")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def write(cells: Sequence[Cell], tasks: Sequence[str], folder: Path) -> dict[str, Any]:
    """pairs.csv, pairs.md and plots/<task>_pairs.png in `folder`; nothing when no hybrid has a twin."""
    found = [(h, t, read_curve(h.dir), read_curve(t.dir)) for h, t in find_pairs(cells)]  # each curve read once
    if not found:
        return {"rows": [], "plots": []}
    rows = [pair_row(*pair) for pair in found]
    write_atomic(folder / "pairs.csv", csv_text(rows, PAIR_FIELDS))
    write_atomic(folder / "pairs.md", markdown(tasks, rows))
    pngs = []
    for task in tasks:
        tp = [pair for pair in found if pair[0].task == task]
        if tp:
            pngs.append(plot(folder / "plots" / f"{task}_pairs.png", task, tp))
    return {"rows": rows, "plots": pngs, "markdown": folder / "pairs.md"}
