import csv
import json
import subprocess
import sys
from math import comb

import pytest
import yaml

from conftest import byte_tokenizer, tiny_model
from hyft import pairs
from hyft.cli import main
from hyft.compare import load_spec, read_curve, run_compare

DATA = "tests/fixtures/data"


def _config(path, **compare):
    cfg = {
        "model": {"name": "unused-because-of-the-factory", "device": "cpu"},
        "zo": {"lr": 1.0e-3},
        "fo": {"lr": 0.05},
        "data": {"data_dir": DATA, "n_train": 16, "n_dev": 8, "n_test": 8, "max_length": 64},
        "train": {"steps": 6, "batch_size": 4, "log_every": 2},
        "compare": {"eval_every": 2, "target": "none", **compare},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def _factory(cfg):
    return tiny_model("llama"), byte_tokenizer()


def _pair_rows(folder):
    with open(folder / "pairs.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("b,c", [(0, 0), (1, 9), (9, 1), (5, 5), (0, 6), (3, 20), (40, 61)])
def test_mcnemar_exact_against_the_binomial_sum(b, c):
    n, k = b + c, min(b, c)
    want = 1.0 if n == 0 else min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n)
    assert pairs.mcnemar_p(b, c) == pytest.approx(want, rel=1e-12)
    assert pairs.mcnemar_p(b, c) == pairs.mcnemar_p(c, b)
    assert pairs.mcnemar_p(1, 9) == pytest.approx(22 / 1024)


def test_discordant_counts_and_length_check():
    assert pairs.discordant("1100", "1010") == (1, 1)
    assert pairs.discordant("1111", "0000") == (4, 0)
    with pytest.raises(ValueError, match="different lengths"):
        pairs.discordant("1", "10")


def test_twins_are_found_by_structure_not_by_name(tmp_path):
    variants = {
        "alpha": {"method": "hybrid", "fo": {"optimizer": "adamw"}},  # a hybrid LoRA-AdamW under another name
        "beta": {"method": "lora", "fo": {"optimizer": "adamw"}},  # its twin
        "fast": {"base": "lora-adamw", "fo": {"lr": 0.2}},  # another FO lr: nobody's twin
    }
    cfg = _config(tmp_path / "c.yaml", variants=variants)
    methods = "lora-adamw,hybrid-lora-adamw,hybrid-lora,lora,prefix-adamw,hybrid-prefix-adamw,mezo,ft,alpha,beta,fast"
    spec = load_spec(cfg, methods=methods, seeds="0,1", out=str(tmp_path / "o"))
    got = {(h.method, t.method, h.seed) for h, t in pairs.find_pairs(spec.cells())}
    want = {("hybrid-lora-adamw", "lora-adamw"), ("hybrid-lora", "lora"), ("hybrid-prefix-adamw", "prefix-adamw"),
            ("alpha", "lora-adamw")}  # fmt: skip
    assert got == {(h, t, s) for h, t in want for s in (0, 1)}
    assert all(h.seed == t.seed and h.task == t.task for h, t in pairs.find_pairs(spec.cells()))


def test_a_hybrid_at_zo_lr_0_is_its_twin_exactly(tmp_path):
    """zo.lr 0: the base is perturbed and restored but never moves, so every paired difference is exactly zero
    (nothing is right in one and wrong in the other, p = 1); with a real ZO lr the loss differs."""
    variants = {"still": {"base": "hybrid-lora-adamw", "zo": {"lr": 0.0}}}
    cfg = _config(tmp_path / "c.yaml", variants=variants)
    spec = load_spec(cfg, methods="lora-adamw,still,hybrid-lora-adamw", seeds="0", out=str(tmp_path / "o"))
    assert not run_compare(spec, model_factory=_factory, log=lambda s: None)["failures"]
    rows = {r["hybrid"]: r for r in _pair_rows(tmp_path / "o")}
    still, moving = rows["still"], rows["hybrid-lora-adamw"]
    assert still["twin"] == moving["twin"] == "lora-adamw"
    assert still["state"] == "done" and still["steps_hybrid"] == still["steps_twin"] == "6"
    for split in ("dev", "test"):
        assert float(still[f"{split}_diff"]) == 0.0
        assert (still[f"{split}_hybrid_only"], still[f"{split}_twin_only"], still[f"{split}_p"]) == ("0", "0", "1.0")
    assert still["loss_hybrid_lower"] == ""  # every step tied
    assert still["loss_diffs"] == " ".join(f"{s}-{s}:+0.0000" for s in range(1, 7))
    assert float(still["loss_diff"]) == 0.0 and still["dev_diffs"] == "0:+0.000 2:+0.000 4:+0.000 6:+0.000"
    assert float(moving["loss_diff"]) != 0.0 and 0.0 <= float(moving["loss_hybrid_lower"]) <= 1.0
    assert (tmp_path / "o" / "plots" / "sst2_pairs.png").stat().st_size > 0
    text = (tmp_path / "o" / "pairs.md").read_text()
    assert "still vs lora-adamw" in text and "McNemar" in text


def test_paired_counts_agree_with_the_accuracies(tmp_path):
    cfg = _config(tmp_path / "c.yaml")
    spec = load_spec(cfg, methods="lora-adamw,hybrid-lora-adamw", seeds="0,1", out=str(tmp_path / "o"),
                     overrides=["--zo.lr", "0.05"])  # fmt: skip
    assert not run_compare(spec, model_factory=_factory, log=lambda s: None)["failures"]
    rows = _pair_rows(tmp_path / "o")
    assert len(rows) == 2
    for r in rows:
        h, t = (spec.out / "cells" / "sst2" / m / f"seed{r['seed']}" for m in (r["hybrid"], r["twin"]))
        for split in ("dev", "test"):
            eh, et = ([x for x in read_curve(d) if x.get("split") == split][-1] for d in (h, t))
            assert len(eh["correct"]) == eh["n"] == 8 and eh["correct"].count("1") / 8 == eh["value"]
            b, c = int(r[f"{split}_hybrid_only"]), int(r[f"{split}_twin_only"])
            assert (b - c) / 8 == pytest.approx(float(r[f"{split}_diff"]))
            assert float(r[f"{split}_hybrid"]) == eh["value"] and float(r[f"{split}_twin"]) == et["value"]
        run = json.loads((h / "run.json").read_text())
        assert float(r["memory_ratio"]) > 0 and run["forwards_per_step"] == 2
    assert "mean ± std of the differences" in (tmp_path / "o" / "pairs.md").read_text()


def test_progress_reads_a_running_study_up_to_the_common_step(tmp_path, capsys):
    cfg = _config(tmp_path / "c.yaml")
    out = tmp_path / "o"
    spec = load_spec(cfg, methods="lora-adamw,hybrid-lora-adamw", seeds="0", out=str(out))
    assert not run_compare(spec, model_factory=_factory, log=lambda s: None)["failures"]
    # The hybrid as a kill at step 3 leaves it: no run.json, its curve up to step 3 (dev at 0 and 2).
    cell = out / "cells" / "sst2" / "hybrid-lora-adamw" / "seed0"
    (cell / "run.json").unlink()
    kept = [x for x in read_curve(cell) if x["step"] <= 3 and x.get("split") != "test"]
    (cell / "curve.jsonl").write_text("".join(json.dumps(x) + "\n" for x in kept))
    holder = subprocess.Popen(  # a running `hyft compare` holds the study's lock
        [sys.executable, "-c", f"from hyft import lock; lock.acquire({str(out)!r}, 'compare'); print('held', "
         "flush=True); input()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        before = {p: p.read_bytes() for p in out.iterdir() if p.is_file()}
        argv = ["compare", "--config", str(cfg), "--methods", "lora-adamw,hybrid-lora-adamw", "--seeds", "0",
                "--out", str(out)]  # fmt: skip
        assert main([*argv, "--report_only"]) == 2  # the writer's way in is refused while it runs
        capsys.readouterr()
        assert main([*argv, "--progress"]) == 0  # the reader's is not
    finally:
        holder.communicate("")
    printed = capsys.readouterr().out
    assert "sst2/hybrid-lora-adamw/seed0  running  3" in printed and "sst2/lora-adamw/seed0" in printed
    row = _pair_rows(out / "progress")[0]
    assert (row["state"], row["steps_hybrid"], row["steps_twin"], row["dev_step"]) == ("running", "3", "6", "2")
    assert row["test_diff"] == "" and row["loss_steps"] == "1-3"
    assert {p: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # the study's own files untouched
    assert (out / "progress" / "plots" / "sst2_pairs.png").is_file()
    # the finished twin's full report beside it (the study's own compare.csv waits for the running study)
    with open(out / "progress" / "compare.csv", newline="") as f:
        got = {r["method"]: r for r in csv.DictReader(f)}
    with open(out / "compare.csv", newline="") as f:
        whole = {r["method"]: r for r in csv.DictReader(f)}
    assert got["hybrid-lora-adamw"]["status"] == "running" and got["hybrid-lora-adamw"]["final_dev"] == ""
    untimed = [k for k in got["lora-adamw"] if not k.endswith(("_s", "_mb"))]
    assert {k: got["lora-adamw"][k] for k in untimed} == {k: whole["lora-adamw"][k] for k in untimed}
    assert "Not finished: sst2/hybrid-lora-adamw/seed0 (running)" in (out / "progress" / "compare.md").read_text()
    assert "| lora-adamw |" in printed and (out / "progress" / "plots" / "sst2.png").is_file()
