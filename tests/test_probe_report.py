"""benchmarks/probe_report.py: the table, CSV and figure of probed runs (docs/results.md "Probes")."""

import csv
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("probe_report", ROOT / "benchmarks" / "probe_report.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["probe_report"] = mod
    spec.loader.exec_module(mod)
    return mod


def _run(path: Path, finished: bool) -> Path:
    path.mkdir()
    rows = [{"step": 10, "loss": 0.7}, {"step": 20, "eval_dev_accuracy": 0.6}]
    for step, ratio in ((10, 0.9), (20, 1.3), (30, 1.0)):
        rows.append({"step": step, "probe_applied": True, "probe_ratio_onesided": ratio, "probe_cum_df_zo": -0.01,
                     "probe_cum_df_fo": -0.2, "probe_drift": 1e-3 * step, "probe_cos_update": -5e-5})  # fmt: skip
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "config.yaml").write_text("zo: {lr: 1.0e-06}\n")
    if finished:  # the end-of-run eval and the ablation are in run.json only
        info = {"config": {"zo": {"lr": 1e-6}}, "steps": 40, "final": {"dev": 0.8, "test": 0.75},
                "ablation": {"dev": {"zo_points": 0.0}, "test": {"zo_points": -0.6667}}}  # fmt: skip
        (path / "run.json").write_text(json.dumps(info))
    return path


def test_report_reads_the_final_dev_and_both_ablations_from_run_json(tmp_path, capsys):
    mod = _load()
    done, partial = _run(tmp_path / "zo1e-6", True), _run(tmp_path / "zo1e-4", False)
    runs = [mod.load(done), mod.load(partial)]
    assert runs[0]["dev"] == [(20, 0.6), (40, 0.8)] and runs[1]["dev"] == [(20, 0.6)]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in mod.table(runs).splitlines()[2:]}
    assert rows["zo1e-6"].endswith("| 3 (30) | 1 | — | — / — | 5e-05 | -0.01 | -0.2 | — | 0.03 | — | — | 0.800 "
                                   "| 0.750 | +0.00 / -0.67 |")  # fmt: skip
    assert rows["zo1e-4"].endswith("| 0.600 | — | — / — |")  # unfinished: last dev point, no test, no ablation
    mod.write_csv(runs, tmp_path / "p.csv")
    with open(tmp_path / "p.csv") as f:
        got = list(csv.DictReader(f))
    assert [(r["run"], r["step"]) for r in got] == [(n, s) for n in ("zo1e-6", "zo1e-4") for s in ("10", "20", "30")]
    mod.plot(runs, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 10_000
