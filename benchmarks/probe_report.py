"""Summarise probed runs (train.probe_every) side by side: a Markdown table, the per-probe CSV and one figure.

    python benchmarks/probe_report.py runs/probe/zo1e-6 runs/probe/zo1e-5 runs/probe/zo1e-4 \
        --csv docs/data/probe_smollm2.csv --png docs/img/probe_smollm2.png

Reads each run's metrics.jsonl (probe rows, dev curve) and run.json (probe summary, ablation, final accuracy); runs
that are still going are reported as far as they got.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any

FIELDS = ["run", "zo_lr", "step", "probe_loss", "probe_exact", "probe_onesided", "probe_central",
          "probe_ratio_onesided", "probe_ratio_central", "probe_relerr_onesided", "probe_relerr_central",
          "probe_cos_z", "probe_cos_update", "probe_grad_x_norm", "probe_grad_y_norm", "probe_df_zo", "probe_df_fo",
          "probe_df_joint", "probe_cum_df_zo", "probe_cum_df_fo", "probe_zo_share", "probe_drift",
          "probe_drift_attention", "probe_drift_mlp", "probe_drift_embed_head", "probe_drift_norm", "probe_zHz",
          "probe_zo_lr_scale", "probe_zo_lr_theory", "probe_zo_lr_over_scale", "probe_fo_curv", "probe_fo_step_norm",
          "probe_est_sq_over_grad_sq"]  # fmt: skip


def load(run: Path) -> dict[str, Any]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    cfg = json.loads(json.dumps(info.get("config", {}))) or _config(run)
    dev = [(r["step"], r["eval_dev_accuracy"]) for r in rows if "eval_dev_accuracy" in r]
    final_dev = (info.get("final") or {}).get("dev")
    if final_dev is not None and (not dev or dev[-1][0] < info.get("steps", 0)):
        dev.append((info["steps"], final_dev))  # the end-of-run eval is in run.json, not in metrics.jsonl
    return {
        "name": run.name,
        "zo_lr": cfg.get("zo", {}).get("lr"),
        "probes": [r for r in rows if "probe_applied" in r],
        "dev": dev,
        "info": info,
    }


def _config(run: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())


def _median(xs):
    xs = sorted(x for x in xs if isinstance(x, (int, float)) and math.isfinite(x))
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def _f(v, fmt="{:.3g}"):
    return "—" if v is None else fmt.format(v)


def table(runs: list[dict[str, Any]]) -> str:
    head = ["run", "zo.lr", "probes (last step)", "estimate / exact (onesided, median)", "central / exact",
            "median rel. error onesided / central", "median abs cos(update, ∇ₓf)", "cum Δf ZO", "cum Δf FO",
            "ZO share", "drift ‖Δx‖/‖x₀‖", "zᵀHz (median)", "zo.lr × zᵀHz", "dev acc (last)",
            "test acc", "ablation dev / test (points)"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        p = r["probes"]
        last = p[-1] if p else {}
        info = r["info"]
        abl = info.get("ablation") or {}
        test = (info.get("final") or {}).get("test")
        cells = [
            r["name"], _f(r["zo_lr"], "{:g}"), f"{len(p)} ({last.get('step', '—')})",
            _f(_median(x.get("probe_ratio_onesided") for x in p)), _f(_median(x.get("probe_ratio_central") for x in p)),
            f"{_f(_median(x.get('probe_relerr_onesided') for x in p))} / "
            f"{_f(_median(x.get('probe_relerr_central') for x in p))}",
            _f(_median(abs(x["probe_cos_update"]) for x in p if x.get("probe_cos_update") is not None)),
            _f(last.get("probe_cum_df_zo")), _f(last.get("probe_cum_df_fo")), _f(last.get("probe_zo_share")),
            _f(last.get("probe_drift")), _f(_median(x.get("probe_zHz") for x in p)),
            _f(_median(x.get("probe_zo_lr_over_scale") for x in p)),
            _f(r["dev"][-1][1] if r["dev"] else None, "{:.3f}"), _f(test, "{:.3f}"),
            " / ".join(_f((abl.get(split) or {}).get("zo_points"), "{:+.2f}") for split in ("dev", "test")),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(runs: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in runs:
            for p in r["probes"]:
                w.writerow({"run": r["name"], "zo_lr": r["zo_lr"], **p})


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(17, 3.8))
    for r in runs:
        p = r["probes"]
        s = [x["step"] for x in p]
        label = f"zo.lr {r['zo_lr']:g}"
        ax[0].plot(s, [x.get("probe_ratio_onesided") for x in p], marker="o", label=label)
        (line,) = ax[1].plot(s, [x.get("probe_cum_df_zo") for x in p], marker="o", label=f"{label}: ZO")
        ax[1].plot(s, [x.get("probe_cum_df_fo") for x in p], ls="--", color=line.get_color(), label=f"{label}: FO")
        ax[2].plot(s, [x.get("probe_drift") for x in p], marker="o", label=label)
        ax[3].plot(*zip(*r["dev"]), marker="o", label=label) if r["dev"] else None
    ax[0].axhline(1.0, color="grey", lw=0.8)
    ax[0].set(title="one-sided estimate / exact ⟨∇ₓf, z⟩", xlabel="step")
    ax[1].set(title="cumulative Δf on the probe batch", xlabel="step")
    ax[2].set(title="base drift ‖xₜ − x₀‖ / ‖x₀‖", xlabel="step", yscale="log")
    ax[3].set(title="dev accuracy", xlabel="step")
    for a in ax:
        a.grid(alpha=0.3)
    ax[1].legend(fontsize=7)
    ax[3].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--csv", type=Path)
    ap.add_argument("--png", type=Path)
    a = ap.parse_args()
    runs = [load(r) for r in a.runs if (r / "metrics.jsonl").exists()]
    print(table(runs))
    if a.csv:
        write_csv(runs, a.csv)
    if a.png:
        plot(runs, a.png)


if __name__ == "__main__":
    main()
