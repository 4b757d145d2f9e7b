import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import byte_tokenizer, save_tiny_model, tiny_model
from hyft import compare
from hyft.cli import main
from hyft.compare import load_spec, run_compare
from hyft.errors import ConfigError
from hyft.variants import parse_variant

DATA = "tests/fixtures/data"


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=1)


def base_config(path, model_dir, **compare):
    cfg = {
        "model": {"name": str(model_dir), "device": "cpu"},
        "zo": {"lr": 1.0e-3},
        "fo": {"lr": 0.05},
        "data": {"data_dir": DATA, "n_train": 16, "n_dev": 4, "n_test": 8, "max_length": 64},
        "train": {"steps": 4, "batch_size": 4, "log_every": 4},
    }
    if compare:
        cfg["compare"] = compare
    path.write_text(yaml.safe_dump(cfg))
    return path


def _rows(out):
    with open(out / "compare.csv") as f:
        return list(csv.DictReader(f))


def test_compare_two_methods_two_seeds_then_resume(saved_model, tmp_path, capsys):
    cfg = base_config(tmp_path / "c.yaml", saved_model)
    out = tmp_path / "cmp"
    argv = ["compare", "--config", str(cfg), "--methods", "hybrid-prefix,lora", "--seeds", "0,1", "--out", str(out),
            "--eval_every", "2"]  # fmt: skip
    assert main(argv) == 0
    rows = _rows(out)
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("lora", "0"),
        ("hybrid-prefix", "0"),
        ("lora", "1"),
        ("hybrid-prefix", "1"),
    ]  # lora first: it sets the target
    for r in rows:
        assert r["status"] == "ok" and r["steps"] == "4" and r["task"] == "sst2"
        assert 0 <= float(r["final_test"]) <= 1 and float(r["best_dev"]) >= float(r["final_dev"])
        assert float(r["peak_memory_mb"]) > 0 and r["memory_kind"] == "peak_rss"
        assert float(r["time_per_step_s"]) > 0 and float(r["train_time_s"]) <= float(r["wall_time_s"]) + 1e-6
        assert r["n_dev"] == "4" and r["n_test"] == "8" and int(r["trainable_params"]) > 0
        lora = next(x for x in rows if x["method"] == "lora" and x["seed"] == r["seed"])
        assert r["target"] == lora["final_dev"]  # the target is lora's final dev accuracy, same seed
        cell = out / "cells" / "sst2" / r["method"] / f"seed{r['seed']}"
        curve = [json.loads(x) for x in (cell / "curve.jsonl").read_text().splitlines()]
        dev = [c for c in curve if c.get("split") == "dev"]
        assert [c["step"] for c in dev] == [0, 2, 4] and [c["step"] for c in curve if "loss" in c] == [1, 2, 3, 4]
        hit = next((c for c in dev if c["value"] >= float(r["target"])), None)
        assert (r["steps_to_target"] or None) == (str(hit["step"]) if hit else None)
        if hit:
            assert float(r["seconds_to_target"]) == pytest.approx(hit["train_s"], abs=1e-3)
        # The cell's own config reproduces it with `hyft train --config cell.yaml`.
        assert yaml.safe_load((cell / "cell.yaml").read_text())["train"]["output_dir"] == str(cell)
    for r in rows:
        if r["method"] == "lora":
            assert r["steps_to_target"] != "" and int(r["zo_params"]) == 0
            assert (r["forwards_per_step"], r["backwards_per_step"]) == ("1", "1")
        else:
            assert int(r["zo_params"]) > 0 and (r["forwards_per_step"], r["backwards_per_step"]) == ("2", "1")
    md = (out / "compare.md").read_text()
    assert "## sst2 (accuracy)" in md and "| lora |" in md and "| hybrid-prefix |" in md and " ± " in md
    png = (out / "plots" / "sst2.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    capsys.readouterr()

    # Rerun: every cell is finished, nothing is trained, outputs are rebuilt identically.
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/*/*/run.json")}
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "ran 0 cell(s), skipped 4 finished" in printed
    assert {p: p.stat().st_mtime_ns for p in out.glob("cells/*/*/*/run.json")} == stamp
    assert _rows(out) == rows

    # A cell that did not finish is run again, and only that one.
    (out / "cells" / "sst2" / "hybrid-prefix" / "seed1" / "run.json").unlink()
    assert main(argv) == 0
    assert "ran 1 cell(s), skipped 3 finished" in capsys.readouterr().out

    # A finished cell is never silently reused under a different config.
    argv2 = [*argv, "--train.batch_size", "2"]
    assert main(argv2) == 2
    assert "finished with a different config" in capsys.readouterr().err


def test_in_process_with_model_factory_and_yaml_variants(tmp_path):
    cfg = base_config(
        tmp_path / "c.yaml", "unused-because-of-the-factory",
        methods=["lora", "fast-lora"], seeds=[0], target=0.0,
        variants={"fast-lora": {"base": "lora", "fo": {"lr": 0.2}}},
    )  # fmt: skip
    spec = load_spec(cfg, out=str(tmp_path / "o"))
    made = []

    def factory(c):
        made.append(c.fo.lr)
        return tiny_model("llama"), byte_tokenizer()

    res = run_compare(spec, model_factory=factory, log=lambda s: None)
    assert res["ran"] == 2 and not res["failures"] and made == [0.05, 0.2]
    rows = _rows(tmp_path / "o")
    assert all(r["status"] == "ok" and r["steps_to_target"] == "0" for r in rows)  # target 0: reached at step 0
    assert all(r["memory_kind"] == "peak_rss_process" for r in rows)  # in one process RSS is not per cell


def test_failed_cell_is_reported_and_the_study_goes_on(tmp_path):
    cfg = base_config(tmp_path / "c.yaml", "x", methods=["lora", "ft"], seeds=[0])
    spec = load_spec(cfg, out=str(tmp_path / "o"))

    def factory(c):
        if c.method == "ft":
            raise RuntimeError("boom")
        return tiny_model("llama"), byte_tokenizer()

    res = run_compare(spec, model_factory=factory, log=lambda s: None)
    assert list(res["failures"]) == ["sst2/ft/seed0"] and "boom" in res["failures"]["sst2/ft/seed0"]
    statuses = {r["method"]: r["status"] for r in _rows(tmp_path / "o")}
    assert statuses == {"lora": "ok", "ft": "failed"}
    assert "sst2/ft/seed0 (failed)" in (tmp_path / "o" / "compare.md").read_text()


@pytest.mark.parametrize(
    "spec,want",
    [
        ("lora", {"method": "lora"}),
        ("lora-adamw", {"method": "lora", "fo": {"optimizer": "adamw"}}),
        ("hybrid-prefix", {"method": "hybrid", "peft": {"type": "prefix"}}),
        (
            "hybrid-prefix-adamw-central",
            {
                "method": "hybrid",
                "peft": {"type": "prefix"},
                "fo": {"optimizer": "adamw"},
                "zo": {"schedule": "central"},
            },
        ),  # fmt: skip
        ("zo-lora", {"method": "zo-lora"}),
        ("zo-lora-onesided", {"method": "zo-lora", "zo": {"schedule": "onesided"}}),
        (
            "h6=hybrid-prefix+zo.lr=1e-6+fo.lr=0.001",
            {"method": "hybrid", "peft": {"type": "prefix"}, "zo": {"lr": 1e-6}, "fo": {"lr": 0.001}},
        ),  # fmt: skip
        ("mine", {"method": "hybrid", "zo": {"mu": 0.01}}),
        ("lora-big", {"method": "lora", "peft": {"r": 16}}),
        ("ft", {"method": "ft", "fo": {"lr": 1e-5}}),
    ],
)
def test_method_variant_syntax(spec, want):
    variants = {
        "mine": {"method": "hybrid", "zo.mu": 0.01},
        "lora-big": {"base": "lora", "peft": {"r": 16}},
        "ft": {"base": "ft", "fo.lr": 1e-5},  # refines the built-in name of the same name
    }
    assert parse_variant(spec, variants).overrides == want


@pytest.mark.parametrize(
    "spec,message",
    [
        ("lorax", "not a preset"),
        ("lora-fast", "unknown suffix 'fast'"),
        ("hybrid+zo.lr=1", "give an inline variant a name"),
        ("x=hybrid+zo.lr", "expected key=value"),
        ("x=nope+zo.lr=1", "not a preset"),
        ("loop", "in a loop"),
        ("nomethod", "give a `method:` or a `base:`"),
    ],
)
def test_bad_variants(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_variant(spec, {"loop": {"base": "pool"}, "pool": {"base": "loop"}, "nomethod": {"fo.lr": 1}})


def test_bad_specs_fail_before_training(tmp_path, capsys):
    cfg = base_config(tmp_path / "c.yaml", "x")
    cases = [
        (["--methods", "hybrid"], "target: 'lora' is not among the methods"),
        (["--methods", "lora,lora"], "given twice"),
        (["--methods", "lora,mezo-prefix"], "uses 'none', not 'prefix'"),
        (["--methods", "lora", "--zo.lrr", "1"], "did you mean 'lr'"),
        (["--methods", "lora", "--seeds", "a"], "seeds: expected integers"),
    ]
    for extra, message in cases:
        assert main(["compare", "--config", str(cfg), "--out", str(tmp_path / "o"), *extra]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "cells").exists()


def test_study_config_is_valid():
    spec = load_spec("examples/compare_smollm2.yaml", overrides=["--data.data_dir", DATA])
    assert [v.name for v in spec.methods] == ["lora", "lora-adamw", "ft", "mezo", "zo-lora", "hybrid-lora",
                                             "hybrid-prefix"]  # fmt: skip
    cells = spec.cells()
    assert len(cells) == 7 * 4 * 2 and cells[0].method == "lora"
    by = {c.method: c.config for c in cells if c.task == "rte" and c.seed == 1}
    assert by["hybrid-prefix"]["peft"]["type"] == "prefix" and by["hybrid-prefix"]["zo"]["lr"] == 1e-6
    assert by["ft"]["fo"] == {"optimizer": "adamw", "lr": 1e-5} and by["zo-lora"]["zo"]["mu"] == 1e-2
    assert by["lora"]["fo"]["optimizer"] == "sgd" and by["lora-adamw"]["fo"]["optimizer"] == "adamw"


def test_run_compare_script(saved_model, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HYFT_DATA_DIR": DATA, "MODEL": str(saved_model), "PYTHON": sys.executable}
    out = tmp_path / "study"
    args = ["bash", "benchmarks/run_compare.sh", str(out), "--tasks", "sst2", "--seeds", "0", "--methods",
            "lora,hybrid-lora", "--train.steps", "2", "--data.n_train", "8", "--data.n_dev", "4", "--data.n_test", "4",
            "--data.max_length", "64", "--eval_every", "1", "--in_process"]  # fmt: skip
    r = subprocess.run(args, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert {p.name for p in out.iterdir()} >= {"env.txt", "compare.log", "compare.csv", "compare.md", "plots", "cells"}
    assert f"model: {saved_model}" in (out / "env.txt").read_text()
    assert [r["status"] for r in _rows(out)] == ["ok", "ok"]
    bad = subprocess.run(args, env={**env, "HYFT_DATA_DIR": str(tmp_path)}, capture_output=True, text=True)
    assert bad.returncode == 2 and "set HYFT_DATA_DIR" in bad.stderr


# -- concurrency, partial-cell resume, random kills ----------------------------------------------------------------
TIMING = {"wall_time_s", "train_time_s", "time_per_step_s", "seconds_to_target", "peak_memory_mb"}
KILLHOOK = Path(__file__).parent / "fixtures" / "killhook"


def _study_args(saved_model, tmp, out, *extra):
    cfg = base_config(tmp / "c.yaml", saved_model)
    return ["compare", "--config", str(cfg), "--methods", "lora,hybrid-lora", "--seeds", "0", "--out", str(out),
            "--eval_every", "2", "--train.steps", "6", "--train.save_every", "2", "--threads", "1",
            *extra]  # fmt: skip


def _untimed(out):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in _rows(out)]


def _cell_record(cell):
    """Everything a cell's result is: final metrics, curve and metrics without times, final checkpoint tensors."""
    from hyft.checkpoint import list_checkpoints, read_tensors

    run = json.loads((cell / "run.json").read_text())
    curve = [{k: v for k, v in json.loads(x).items() if k != "train_s"} for x in (cell / "curve.jsonl").open()]
    metrics = [{k: v for k, v in json.loads(x).items() if k != "elapsed_s"} for x in (cell / "metrics.jsonl").open()]
    last = list_checkpoints(cell)[-1]
    tensors = {}
    for f in sorted(last.rglob("*.safetensors")):
        for name, t in read_tensors(f).items():
            tensors[f"{f.relative_to(last)}:{name}"] = t
    ledger = json.loads((last / "ledger.json").read_text())
    return {"final": run["final"], "steps": run["steps"], "curve": curve, "metrics": metrics, "last": last.name,
            "ledger": ledger}, tensors  # fmt: skip


def _same_cells(a, b):
    for cell in sorted(p.relative_to(a) for p in a.glob("cells/*/*/seed*")):
        (ra, ta), (rb, tb) = _cell_record(a / cell), _cell_record(b / cell)
        assert ra == rb, cell
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), cell


def _compare_subprocess(argv, kill=None):
    """`hyft compare` in its own process group (so a kill hits it and its cells, not pytest); the exit code."""
    env = {k: v for k, v in os.environ.items() if k != "HYFT_KILL"}
    env["PYTHONPATH"] = os.pathsep.join([str(KILLHOOK), str(Path("src").resolve()), env.get("PYTHONPATH", "")])
    if kill:
        env["HYFT_KILL"] = kill
    r = subprocess.run([sys.executable, "-m", "hyft", *argv], env=env, capture_output=True, text=True,
                       start_new_session=True, timeout=300)  # fmt: skip
    return r.returncode, r.stdout + r.stderr


@pytest.fixture(scope="module")
def undisturbed(saved_model, tmp_path_factory):
    """The reference study: two cells, one after the other, never interrupted."""
    tmp = tmp_path_factory.mktemp("ref")
    out = tmp / "study"
    assert main(_study_args(saved_model, tmp, out)) == 0
    return out


def test_jobs_2_gives_the_same_study_as_jobs_1(undisturbed, saved_model, tmp_path, capsys):
    out = tmp_path / "study"
    assert main(_study_args(saved_model, tmp_path, out, "--jobs", "2")) == 0
    assert _untimed(out) == _untimed(undisturbed) and [r["status"] for r in _rows(out)] == ["ok", "ok"]
    _same_cells(undisturbed, out)
    cells = [out / "cells" / "sst2" / m / "seed0" for m in ("lora", "hybrid-lora")]
    # --threads 1 pins both studies (CPU kernels may round differently at another thread count)
    for c in cells:
        assert json.loads((c / "runner.json").read_text())["threads"] == 1
        assert "1 torch thread(s)" in (c / "log.txt").read_text()  # what the cell process itself used
    assert json.loads((undisturbed / "cells/sst2/lora/seed0/runner.json").read_text())["threads"] == 1
    # without --threads: untouched for one cell at a time, cores // N for N at once
    assert compare.threads_per_cell(1) is None and compare.threads_per_cell(2) == max(1, compare.cpu_cores() // 2)
    assert compare.threads_per_cell(2, 3) == 3
    # Both cells ran at the same time: the second was launched before the first ended.
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[hyft] ") and "seed0: " in x]
    assert [x.split(": ")[1][:7] for x in lines[:3]] == ["running", "running", "done in"], lines
    assert main([*_study_args(saved_model, tmp_path, out, "--jobs", "2"), "--report_only"]) == 0
    assert _untimed(out) == _untimed(undisturbed)
    with pytest.raises(ConfigError, match="--jobs"):
        run_compare(load_spec(tmp_path / "c.yaml", methods="lora", out=str(tmp_path / "x")), jobs=2,
                    in_process=True)  # fmt: skip


def test_snapshot_script_copies_a_study_into_the_docs_layout(undisturbed, saved_model, tmp_path):
    """benchmarks/snapshot_study.sh: the finished study's report, pairs and per-cell records, and nothing of its
    weights; the study folder itself is not changed."""
    before = {p: p.read_bytes() for p in undisturbed.rglob("*") if p.is_file() and "progress" not in p.parts}
    dest = tmp_path / "docs_data"
    argv = _study_args(saved_model, tmp_path, undisturbed)[1:]
    out_at = argv.index("--out")
    del argv[out_at : out_at + 2]  # the script passes the study folder as --out itself
    env = {**os.environ, "PYTHON": sys.executable}
    r = subprocess.run(["bash", "benchmarks/snapshot_study.sh", str(undisturbed), str(dest), *argv], env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "2 cell(s)" in r.stdout
    assert _untimed(dest) == _untimed(undisturbed)  # compare.csv of the same cells
    assert (dest / "pairs.csv").is_file() and (dest / "plots" / "sst2_pairs.png").is_file()
    assert "sst2/hybrid-lora/seed0  done" in (dest / "progress.txt").read_text()
    for m in ("lora", "hybrid-lora"):
        cell = dest / "cells" / "sst2" / m / "seed0"
        assert sorted(p.name for p in cell.iterdir()) == ["cell.yaml", "curve.jsonl", "eval.json", "metrics.jsonl",
                                                          "run.json"]  # fmt: skip
        original = undisturbed / "cells" / "sst2" / m / "seed0" / "curve.jsonl"
        assert (cell / "curve.jsonl").read_bytes() == original.read_bytes()
    assert not list(dest.rglob("*.safetensors"))
    assert {p: p.read_bytes() for p in undisturbed.rglob("*") if p.is_file() and "progress" not in p.parts} == before
    bad = subprocess.run(["bash", "benchmarks/snapshot_study.sh", str(tmp_path / "nothing"), str(dest)],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "holds no study" in bad.stderr


def test_a_cell_killed_mid_training_resumes_bit_identical(undisturbed, saved_model, tmp_path):
    out = tmp_path / "study"
    argv = _study_args(saved_model, tmp_path, out)
    # SIGKILL (compare process and cell together) before the 4th step of the first cell: the checkpoint at step 2
    # survives, step 3 is lost and must be redone.
    rc, log = _compare_subprocess(argv, kill="cell.step:4")
    assert rc == -signal.SIGKILL, log
    cell = out / "cells" / "sst2" / "lora" / "seed0"
    assert not (cell / "run.json").exists() and (cell / "checkpoints" / "step-00000002" / "COMPLETE").is_file()
    assert max(json.loads(x)["step"] for x in (cell / "curve.jsonl").open()) == 3
    rc, log = _compare_subprocess([*argv, "--dry_run"])
    assert rc == 0 and "pending (continues from step-00000002) sst2/lora/seed0" in log
    rc, log = _compare_subprocess(argv)
    assert rc == 0, log
    assert f"1/2 sst2/lora/seed0: running, continued from step 2 ({cell / 'checkpoints' / 'step-00000002'})" in log
    assert "continuing from" in (cell / "log.txt").read_text()
    assert _untimed(out) == _untimed(undisturbed)
    _same_cells(undisturbed, out)  # metrics, curve, final weights and ledger bit for bit
    # A finished study is reported as it is.
    rc, log = _compare_subprocess([*argv, "--report_only"])
    assert rc == 0 and _untimed(out) == _untimed(undisturbed)


def test_random_sigkills_end_with_the_undisturbed_study(undisturbed, saved_model, tmp_path):
    """The study killed with SIGKILL at seeded random moments (in a step, mid-checkpoint, after the last step,
    between cells, halfway through a study file) and rerun until done equals the undisturbed one."""
    import random

    out = tmp_path / "study"
    argv = _study_args(saved_model, tmp_path, out)
    rng = random.Random(18)
    # (point, range of the count at which it fires), in an order that leaves work for every kill: inside the first
    # cell (a step, then mid-checkpoint: in a seeded order), then halfway through a study file written after it
    # finishes (write calls 4-6 of a run), the end of the second cell (before its run.json), before it is relaunched.
    inside = [("cell.step", 1, 3), ("cell.checkpoint", 1, 2)]
    rng.shuffle(inside)
    points = [*inside, ("parent.write", 4, 6), ("cell.final", 1, 1), ("parent.launch", 1, 1)]
    kills, runs = 0, 0
    for point, least, most in points:
        rc, log = _compare_subprocess(argv, kill=f"{point}:{rng.randint(least, most)}")
        runs += 1
        kills += rc == -signal.SIGKILL
        assert rc in (0, -signal.SIGKILL), log
    for _ in range(3):  # then undisturbed until it reports done
        rc, log = _compare_subprocess(argv)
        if rc == 0:
            break
    assert rc == 0 and "running, continued from step 6 (" in log, log  # the cell killed before run.json
    assert kills == runs == 5, f"only {kills} of {runs} runs were killed: a kill point missed"
    a, b = _untimed(out), _untimed(undisturbed)
    assert a == b, [(i, k, x.get(k), y.get(k)) for i, (x, y) in enumerate(zip(a, b)) for k in x if x.get(k) != y.get(k)]
    _same_cells(undisturbed, out)
    assert not list(out.rglob(".*.tmp-*"))  # no torn temporary left behind


def test_run_study_launcher_reruns_until_done(tmp_path):
    """benchmarks/run_study.sh reruns the hyft command until it exits 0 (here a stand-in interpreter that fails
    twice, as a killed study would), stops at once on exit 2, and in the background writes its pid and logs."""
    stub = tmp_path / "python"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        '[ "$1" = "-c" ] && { echo "python stub"; exit 0; }\n'
        'n=$(cat "$STUB_COUNT" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$STUB_COUNT"\n'
        'echo "attempt $n: $*"; [ $n -ge "$STUB_OK_AT" ] && exit 0; exit "$STUB_RC"\n'
    )
    stub.chmod(0o755)
    study = tmp_path / "study"

    def launch(*extra, ok_at=3, rc=137, foreground=True):
        env = {**os.environ, "PYTHON": str(stub), "STUB_COUNT": str(tmp_path / f"count{rc}"), "STUB_OK_AT": str(ok_at),
               "STUB_RC": str(rc), "HYFT_STUDY_WAIT": "0", "HYFT_STUDY_TRIES": "5"}  # fmt: skip
        args = ["bash", "benchmarks/run_study.sh", str(study), *(["--foreground"] if foreground else []), *extra]
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)

    r = launch("compare", "--out", str(study))
    assert r.returncode == 0, r.stdout + r.stderr
    log = (study / "study.log").read_text()
    assert [x for x in log.splitlines() if x.startswith("attempt ")] == [f"attempt {i}: -m hyft compare --out {study}"
                                                                       for i in (1, 2, 3)]  # fmt: skip
    assert "attempt 2 exited with 137" in r.stdout and (study / "DONE").is_file()
    assert "python stub" in (study / "env.txt").read_text()
    r = launch("sweep", ok_at=99, rc=2)  # a config error is not retried
    assert r.returncode == 2 and "not retrying" in r.stdout and not (study / "DONE").exists()
    env = (study / "env.txt").read_text()  # both launches, each with its command and commit
    assert [x for x in env.splitlines() if x.startswith("command: ")] == [f"command: hyft compare --out {study}",
                                                                         "command: hyft sweep"]  # fmt: skip
    assert env.count("\ncommit: ") + env.startswith("commit: ") == 2 and "\n---\n" in env
    assert (tmp_path / "count2").read_text().strip() == "1"
    r = launch("compare", ok_at=99, rc=1)
    assert r.returncode == 3 and (tmp_path / "count1").read_text().strip() == "5"
    assert launch("train").returncode == 2  # only compare and sweep
    (tmp_path / "count137").unlink()
    r = launch("compare", foreground=False)
    assert r.returncode == 0 and "started in the background" in r.stdout
    pid = int((study / "launcher.pid").read_text())
    for _ in range(200):
        if (study / "DONE").is_file():
            break
        time.sleep(0.05)
    assert (study / "DONE").is_file() and "attempt 3" in (study / "launcher.log").read_text()
    assert pid > 0


def test_cpu_study_plan_runs_its_stages_in_order_and_skips_finished_ones(tmp_path, capsys):
    """benchmarks/cpu_study_plan.sh under a stand-in interpreter that records each hyft command: the stages run in
    the given order into their folders, each is marked when it finished, a rerun skips them, a failing stage stops
    the plan with its code; the compare commands it issues are valid (hyft compare --dry_run on them)."""
    stub = tmp_path / "python"
    stub.write_text('#!/usr/bin/env bash\n[ "$1" = "-c" ] && exit 0\necho "$*" >> "$STUB_LOG"; exit "${STUB_RC:-0}"\n')
    stub.chmod(0o755)
    runs, log = tmp_path / "runs", tmp_path / "calls.txt"

    def plan(stages, *extra, rc=0):
        env = {**os.environ, "PYTHON": str(stub), "STUB_LOG": str(log), "STUB_RC": str(rc), "STAGES": stages,
               "HYFT_STUDY_WAIT": "0", "DATA": DATA}  # fmt: skip
        return subprocess.run(["bash", "benchmarks/cpu_study_plan.sh", str(runs), *extra], env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    r = plan("lora-s0 prompt-lr sgd-lr")
    assert r.returncode == 0, r.stdout + r.stderr
    calls = log.read_text().splitlines()
    assert [c.split()[2] for c in calls] == ["compare", "sweep", "sweep"]
    assert (
        f"--out {runs}/study_cpu_sst2 --data.data_dir {DATA} --seeds 0 --methods lora-adamw,hybrid-lora-adamw"
        in calls[0]
        and "--grid fo.lr=1e-3,1e-2,3e-4,3e-2" in calls[1]
        and "--fo.optimizer sgd" in calls[2]
    )
    assert sorted(p.name for p in (runs / ".plan").iterdir()) == ["lora-s0.done", "prompt-lr.done", "sgd-lr.done"]
    r = plan("lora-s0 prompt-lr sgd-lr lora-s1", "--list")
    assert r.stdout.count(": done") == 3 and "lora-s1: to do" in r.stdout and len(log.read_text().splitlines()) == 3
    r = plan("lora-s1 landscape", rc=2)  # a config error: not retried, the plan stops there
    assert r.returncode == 2 and "landscape" not in r.stdout and not (runs / ".plan" / "lora-s1.done").exists()
    assert plan("nonsense").returncode == 2
    argv = calls[0].split()[2:]
    assert main([*argv, "--dry_run"]) == 0
    assert "0/2 cells finished" in capsys.readouterr().out


def test_cpu_study_and_landscape_configs_are_valid():
    from hyft.config import expand, from_dict, merge
    from hyft.methods import resolve
    from hyft.sweep import base_dict, check_heatmap_keys, parse_grid, trial_params

    spec = load_spec("examples/study_cpu_sst2.yaml", overrides=["--data.data_dir", DATA])
    assert [v.name for v in spec.methods] == ["lora-adamw", "hybrid-lora-adamw", "prompt-adamw", "hybrid-prompt-adamw",
                                             "lora-sgd", "hybrid-lora-sgd"]  # fmt: skip
    cells = spec.cells()
    assert len(cells) == 12 and spec.target == "lora-adamw" and spec.eval_every == 100
    by = {c.method: c.config for c in cells if c.seed == 1}
    for name, cfg in by.items():
        assert cfg["train"]["save_every"] == 50 and cfg["train"]["steps"] == 1000 and cfg["train"]["batch_size"] == 16
        assert cfg["data"] | {"data_dir": None} == {"task": "sst2", "n_train": 1000, "n_dev": 200, "n_test": 500,
                                                   "max_length": 256, "data_dir": None}  # fmt: skip
        assert cfg["method"] == ("hybrid" if name.startswith("hybrid") else name.split("-")[0])
        if name.startswith("hybrid"):
            assert cfg["zo"]["lr"] == 1e-6
    assert by["prompt-adamw"]["fo"] == by["hybrid-prompt-adamw"]["fo"] == {"optimizer": "adamw", "lr": 1e-3}
    assert {by[m]["peft"]["prompt_init"] for m in ("prompt-adamw", "hybrid-prompt-adamw")} == {"sample_vocab"}
    # The LoRA cells' configs are what their running cells were started with (no prompt_init: they resume).
    assert "prompt_init" not in by["lora-adamw"]["peft"] and "prompt_init" not in by["hybrid-lora-adamw"]["peft"]
    assert by["lora-sgd"]["fo"] == by["hybrid-lora-sgd"]["fo"] == {"optimizer": "sgd", "lr": 1e-2}
    assert by["hybrid-prompt-adamw"]["peft"]["type"] == "prompt"
    # The landscape: every grid point of the header's command is a valid hybrid LoRA AdamW config of 200 steps.
    base = base_dict("examples/landscape_sst2.yaml", ["--data.data_dir", DATA])
    grid = parse_grid(["zo.lr=0,1e-7,1e-6,1e-5,1e-4", "fo.lr=3e-4,1e-3,3e-3"])
    assert check_heatmap_keys("zo.lr,fo.lr", grid) == ("zo.lr", "fo.lr")
    points = trial_params(grid)
    assert len(points) == 15
    for p in points:
        cfg = from_dict(merge(base, expand(p)))
        m = resolve(cfg)
        assert (m.base, m.peft, cfg.fo.optimizer, cfg.train.steps) == ("zo", "lora", "adamw", 200)
        assert (cfg.zo.lr, cfg.fo.lr) == (p["zo.lr"], p["fo.lr"])


def test_in_process_cell_resumes_from_its_checkpoint(tmp_path, monkeypatch, capsys):
    """The in-process runner (a model factory) continues an interrupted cell too, and ends where an uninterrupted
    one does."""
    cfg = base_config(tmp_path / "c.yaml", "x", methods=["hybrid-lora"], seeds=[0], target="none")
    factory = lambda c: (tiny_model("llama"), byte_tokenizer())
    over = ["--train.steps", "6", "--train.save_every", "2"]
    ref = load_spec(cfg, out=str(tmp_path / "ref"), eval_every=2, overrides=over)
    assert not run_compare(ref, model_factory=factory, log=lambda s: None)["failures"]

    real = compare.Trainer.train_step

    def crash_at_5(self):
        if self.step == 4:
            raise RuntimeError("power cut")
        return real(self)

    spec = load_spec(cfg, out=str(tmp_path / "cut"), eval_every=2, overrides=over)
    monkeypatch.setattr(compare.Trainer, "train_step", crash_at_5)
    assert (
        "power cut"
        in run_compare(spec, model_factory=factory, log=lambda s: None)["failures"]["sst2/hybrid-lora/seed0"]
    )
    monkeypatch.setattr(compare.Trainer, "train_step", real)
    cell = tmp_path / "cut" / "cells" / "sst2" / "hybrid-lora" / "seed0"
    saved = sorted(p.name for p in (cell / "checkpoints").iterdir())
    changed = load_spec(cfg, out=str(tmp_path / "cut"), eval_every=2, overrides=[*over, "--zo.lr", "2e-3"])
    with pytest.raises(ConfigError, match=r"unfinished, with checkpoints up to step-00000004 .* different config"):
        run_compare(changed, model_factory=factory, log=lambda s: None)  # not started over: that deletes them
    assert sorted(p.name for p in (cell / "checkpoints").iterdir()) == saved
    argv = ["compare", "--config", str(cfg), "--out", str(tmp_path / "cut"), "--eval_every", "2", *over]
    capsys.readouterr()
    assert main([*argv, "--zo.lr", "2e-3", "--dry_run"]) == 0
    assert "refused (run with another config: see its cell.yaml) sst2/hybrid-lora/seed0" in capsys.readouterr().out
    assert main([*argv, "--dry_run"]) == 0
    assert "pending (continues from step-00000004) sst2/hybrid-lora/seed0" in capsys.readouterr().out
    logs = []
    assert not run_compare(spec, model_factory=factory, log=logs.append)["failures"]
    assert json.loads((cell / "runner.json").read_text())["resumed_from"].endswith("step-00000004")
    assert _untimed(tmp_path / "cut") == _untimed(tmp_path / "ref")
    _same_cells(tmp_path / "ref", tmp_path / "cut")


def test_compare_reports_probe_columns_and_the_share_panel(saved_model, tmp_path):
    """Cells run with probes carry the probe summary and the ZO ablation into the CSV, and the plot gets a third
    row (ZO vs FO share of the probe-batch loss change); cells without probes leave those columns empty."""
    import matplotlib.image

    cfg = base_config(tmp_path / "c.yaml", saved_model)
    out = tmp_path / "cmp"
    argv = ["compare", "--config", str(cfg), "--methods", "lora,hybrid", "--seeds", "0", "--out", str(out),
            "--train.probe_every", "2"]  # fmt: skip
    assert main(argv) == 0
    rows = {r["method"]: r for r in _rows(out)}
    run = json.loads((out / "cells" / "sst2" / "hybrid" / "seed0" / "run.json").read_text())
    for key in compare.PROBE_FIELDS:
        assert rows["hybrid"][key] != "", key
    assert float(rows["hybrid"]["probe_zo_share"]) == pytest.approx(run["probe"]["zo_share"])
    assert float(rows["hybrid"]["ablation_test_zo_points"]) == run["ablation"]["test"]["zo_points"]
    assert rows["lora"]["probe_drift"] == "" and rows["lora"]["ablation_test_zo_points"] == ""
    three_rows = matplotlib.image.imread(out / "plots" / "sst2.png").shape[0]
    assert (
        main(["compare", "--config", str(cfg), "--methods", "lora", "--seeds", "0", "--out", str(tmp_path / "b")]) == 0
    )
    two_rows = matplotlib.image.imread(tmp_path / "b" / "plots" / "sst2.png").shape[0]
    assert three_rows > 1.3 * two_rows


def test_gpu_study_config_is_valid():
    spec = load_spec("examples/study_gpu.yaml", overrides=["--data.data_dir", DATA])
    cells = spec.cells()
    assert len(cells) == 6 * 4 * 2 and spec.target == "lora-adamw" and spec.eval_every == 500
    assert {c.task for c in cells} == {"sst2", "rte", "wsc", "wic", "copa", "winogrande"}
    for c in cells:
        assert c.config["train"]["steps"] == 5000 and c.config["train"]["save_every"] == 500
        assert c.config["model"].get("device", "auto") == "auto"  # the script asks for cuda; validation here is on CPU
        if c.method.startswith("hybrid"):
            assert c.config["zo"]["lr"] == 1e-6
