"""benchmarks/step_cost.py runs end to end on the tiny config (CPU) and prints its table."""

import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("step_cost", ROOT / "benchmarks" / "step_cost.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["step_cost"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_step_cost_runs_on_the_tiny_config_and_prints_the_table(capsys, tmp_path):
    mod = _load()
    out_json = tmp_path / "cost.json"
    results = mod.main(
        ["--configs", "tiny:2x8", "--device", "cpu", "--warmup", "0", "--iters", "1", "--json", str(out_json)]
    )
    text = capsys.readouterr().out
    assert "## Step cost (" in text and f"torch {torch.__version__}" in text
    assert "| what | ms | peak memory | note |" in text and "| ratio | value | target |" in text
    for row in ("forward", "ft (AdamW)", "lora", "hybrid onesided torch gaussian", "hybrid central torch gaussian",
                "hybrid alternating torch gaussian", "mezo torch gaussian", "perturb pass torch (per tensor)",
                "copy of the ZO weights' bytes"):  # fmt: skip
        assert f"| {row} |" in text, row
    assert "hybrid onesided torch gaussian / (lora + forward)" in text
    assert "mezo torch gaussian / (2 forwards)" in text
    (res,) = results
    assert all(r.ms is not None and r.ms >= 0 for r in res.rows.values())
    assert out_json.read_text().startswith("{")


def test_interleaved_cpu_rows_run_on_the_tiny_config(capsys):
    mod = _load()
    (res,) = mod.main(["--configs", "tiny:2x8", "--device", "cpu", "--interleave", "--warmup", "0", "--iters", "2"])
    text = capsys.readouterr().out
    for kernels, dist in (("torch", "gaussian"), ("blocked", "gaussian"), ("blocked", "rademacher")):
        for row in (f"hybrid onesided {kernels} {dist}", f"mezo {kernels} {dist}", f"perturb pass {kernels} {dist}",
                    f"update pass {kernels} {dist}"):  # fmt: skip
            assert f"| {row} |" in text, row
        assert f"| hybrid onesided {kernels} {dist} / (lora + forward) |" in text
        assert f"| (mezo {kernels} {dist} - 2 forwards) / copy |" in text
    assert "round 2/2" in text
    assert all(r.ms is not None and r.ms >= 0 for r in res.rows.values())
    assert all(v is not None for _, v, _ in res.ratios)
