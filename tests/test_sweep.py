import csv
import json
import math

import pytest
import torch
import yaml

from conftest import byte_tokenizer, save_tiny_model, tiny_model
from hyft.cli import main
from hyft.config import load_config
from hyft.errors import ConfigError, HyftError
from hyft.sweep import parse_grid, run_sweep, trial_params

DATA = "tests/fixtures/data"


def base(**train):
    return {
        "model": {"device": "cpu"},
        "data": {"data_dir": DATA, "n_train": 16, "n_dev": 4, "n_test": 4, "max_length": 64},
        "train": {"steps": 10, "batch_size": 4, "log_every": 1, **train},
        "fo": {"lr": 0.01},
    }


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def factory(cfg):
    return tiny_model("llama"), byte_tokenizer()


def test_sweep_stops_a_diverging_trial_and_picks_a_finished_one(tmp_path):
    grid = parse_grid(["zo.lr=1e9,1e-3", "fo.lr=0.01"])
    res = run_sweep(base(), grid, method="hybrid", out=tmp_path, steps=6, model_factory=factory, log=lambda s: None)
    huge, sane = res["trials"]
    assert huge.params == {"zo.lr": 1e9, "fo.lr": 0.01} and huge.status == "diverged"
    assert huge.steps < 6 and (not math.isfinite(huge.final_loss) or huge.final_loss > 4 * 0.5)
    assert "diverged at step" in huge.message and huge.final_dev is None
    assert not (tmp_path / "trials" / "000" / "run.json").exists()  # stopped before the end
    assert sane.status == "ok" and sane.steps == 6 and sane.final_dev is not None
    assert res["best"] is sane
    cfg = load_config(tmp_path / "best.yaml")
    assert cfg.method == "hybrid" and cfg.zo.lr == 1e-3 and cfg.fo.lr == 0.01
    assert cfg.train.steps == 10  # the base config's run length, not the sweep's short one
    rows = _csv(tmp_path / "sweep.csv")
    assert [r["status"] for r in rows] == ["diverged", "ok"]
    assert json.loads((tmp_path / "sweep.json").read_text())["best"]["trial"] == 1


def test_fo_divergence_is_caught_too(tmp_path):
    grid = parse_grid(["fo.lr=1e7,0.01"])
    res = run_sweep(base(), grid, method="lora", out=tmp_path, steps=5, model_factory=factory, log=lambda s: None)
    assert [t.status for t in res["trials"]] == ["diverged", "ok"] and res["best"].params == {"fo.lr": 0.01}


def test_picks_by_dev_accuracy(tmp_path, monkeypatch):
    """Of finished trials the one with the best final dev accuracy wins, whatever its position."""
    from hyft import sweep

    devs = iter([0.25, 0.75, 0.5])
    real_fit = sweep.Trainer.fit

    def fit(self):
        info = real_fit(self)
        info["final"]["dev"] = next(devs)
        return info

    monkeypatch.setattr(sweep.Trainer, "fit", fit)
    grid = parse_grid(["fo.lr=0.001,0.002,0.003"])
    res = run_sweep(base(), grid, method="lora", out=tmp_path, steps=2, model_factory=factory, log=lambda s: None)
    assert res["best"].params == {"fo.lr": 0.002} and res["best"].final_dev == 0.75


def test_all_diverged_is_an_error(tmp_path):
    grid = parse_grid(["fo.lr=0.01,0.02"])
    with pytest.raises(HyftError, match="no trial finished"):
        run_sweep(base(), grid, method="lora", out=tmp_path, steps=3, max_loss=0.0, model_factory=factory,
                  log=lambda s: None)  # fmt: skip
    assert [r["status"] for r in _csv(tmp_path / "sweep.csv")] == ["diverged", "diverged"]


def test_grid_and_random_points():
    grid = parse_grid(["zo.lr=1e-6,1e-5", "fo.lr=1e-4,1e-3,1e-2", "zo.mu=1e-3", "steps=5"])
    assert grid == {"zo.lr": [1e-6, 1e-5], "fo.lr": [1e-4, 1e-3, 1e-2], "zo.mu": [1e-3], "train.steps": [5]}
    points = trial_params(grid)
    assert len(points) == 6 and points[0] == {"zo.lr": 1e-6, "fo.lr": 1e-4, "zo.mu": 1e-3, "train.steps": 5}
    picked = trial_params(grid, 3, seed=1)
    assert len(picked) == 3 and len({json.dumps(p) for p in picked}) == 3 and all(p in points for p in picked)
    assert picked == trial_params(grid, 3, seed=1) and trial_params(grid, 99) == points
    for bad, message in ([["zo.lr"]], "expected key=v1"), ([["zo.lr="]], "no values"), ([[]], "nothing to sweep"):
        with pytest.raises(ConfigError, match=message):
            parse_grid(*bad)


def test_cli_sweep_on_a_saved_model(tmp_path, capsys):
    model_dir = save_tiny_model(tmp_path / "model")
    cfg = base()
    cfg["model"]["name"] = str(model_dir)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    argv = ["sweep", "--config", str(tmp_path / "c.yaml"), "--method", "lora", "--grid", "fo.lr=0.01,0.02,0.03",
            "--random", "2", "--steps", "2", "--out", str(tmp_path / "s")]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "best: trial" in printed and (tmp_path / "s" / "best.yaml").is_file()
    assert len(_csv(tmp_path / "s" / "sweep.csv")) == 2
    assert main([*argv[:-2], "--out", str(tmp_path / "t"), "--grid", "zo.lrr=1"]) == 2
    assert "did you mean 'lr'" in capsys.readouterr().err


def test_heatmap_of_the_learning_rate_landscape(tmp_path, capsys):
    """zo.lr x fo.lr of hybrid LoRA: the table behind heatmap.png holds every trial's status and dev accuracy, the
    diverging zo.lr marked, the zo.lr 0 column (the FO twin) finished; a rerun reuses the finished trials."""
    grid = parse_grid(["zo.lr=1e9,0,1e-3", "fo.lr=0.01,0.02"])
    made = []

    def counting(cfg):
        made.append(cfg.zo.lr)
        return factory(cfg)

    res = run_sweep(base(), grid, method="hybrid", out=tmp_path, steps=3, model_factory=counting,
                    heatmap=("zo.lr", "fo.lr"), log=lambda s: None)  # fmt: skip
    png = (tmp_path / "heatmap.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    table = _csv(tmp_path / "heatmap.csv")
    assert [(float(r["fo.lr"]), float(r["zo.lr"])) for r in table] == [
        (0.01, 0.0), (0.01, 1e-3), (0.01, 1e9), (0.02, 0.0), (0.02, 1e-3), (0.02, 1e9)]  # fmt: skip
    by_trial = {t.index: t for t in res["trials"]}
    for r in table:  # every cell is its trial's result, nothing else
        t = by_trial[int(r["trial"])]
        assert t.params == {"zo.lr": float(r["zo.lr"]), "fo.lr": float(r["fo.lr"])} and r["status"] == t.status
        assert (float(r["final_dev"]) if r["final_dev"] else None) == t.final_dev
        assert r["status"] == ("diverged" if t.params["zo.lr"] == 1e9 else "ok")
    assert len(made) == 6
    # Run again: every trial is reused, nothing is trained, the same table comes out.
    again = run_sweep(base(), grid, method="hybrid", out=tmp_path, steps=3, model_factory=counting,
                      heatmap=("zo.lr", "fo.lr"), log=lambda s: None)  # fmt: skip
    rows = lambda r: json.dumps([t.row() for t in r["trials"]])  # a diverged trial's loss is nan
    assert len(made) == 6 and rows(again) == rows(res)
    assert _csv(tmp_path / "heatmap.csv") == table
    # Redrawn from sweep.csv alone.
    (tmp_path / "heatmap.png").unlink()
    assert main(["sweep", "--out", str(tmp_path), "--heatmap", "zo.lr,fo.lr", "--report_only"]) == 0
    assert (tmp_path / "heatmap.png").is_file() and _csv(tmp_path / "heatmap.csv") == table
    for keys, message in (("zo.lr", "two different grid keys"), ("zo.lr,zo.mu", "zo.mu is not swept")):
        assert main(["sweep", "--out", str(tmp_path), "--heatmap", keys, "--report_only"]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(ConfigError, match="train.steps also vary"):
        run_sweep(base(), parse_grid(["zo.lr=0,1", "fo.lr=1", "steps=1,2"]), method="hybrid", out=tmp_path / "x",
                  heatmap=("zo.lr", "fo.lr"), model_factory=factory, log=lambda s: None)  # fmt: skip


def test_zo_lr_0_is_hybrid_with_a_still_base_and_equals_its_fo_twin(tmp_path):
    """The landscape's zo.lr = 0 column: validation accepts it, the step is still hybrid (2 forwards, 1 backward,
    the base perturbed and restored), the base never moves, and the adapter follows FO-LoRA bit for bit."""
    from hyft.trainer import Trainer
    from hyft.validate import check_config

    runs = {}
    for method in ("hybrid", "lora"):
        d = merge_dict(base(steps=4), {"method": method, "train": {"output_dir": str(tmp_path / method)}})
        if method == "hybrid":
            d["zo"] = {"lr": 0.0}
        (tmp_path / f"{method}.yaml").write_text(yaml.safe_dump(d))
        cfg = load_config(tmp_path / f"{method}.yaml")
        check_config(cfg)
        model = tiny_model("llama")
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        tr = Trainer(cfg, model=model, tokenizer=byte_tokenizer())
        info = tr.fit()
        after = {n.replace("base_model.model.", "").replace(".base_layer", ""): p.detach()
                 for n, p in tr.model.named_parameters() if "lora_" not in n}  # fmt: skip
        assert after.keys() == before.keys() and all(torch.equal(after[n], before[n]) for n in before)
        adapter = {n: p.detach() for n, p in tr.model.named_parameters() if "lora_" in n}
        runs[method] = (info, adapter)
    (hy, hy_adapter), (lo, lo_adapter) = runs["hybrid"], runs["lora"]
    assert (hy["forwards_per_step"], hy["backwards_per_step"], lo["forwards_per_step"]) == (2, 1, 1)
    assert hy["params"]["zo_params"] > 0 and hy["final"] == lo["final"]
    assert hy_adapter.keys() == lo_adapter.keys() and all(torch.equal(hy_adapter[n], lo_adapter[n]) for n in hy_adapter)
    assert any(not torch.equal(p, q) for p, q in zip(hy_adapter.values(), tiny_adapter_init(tmp_path)))


def tiny_adapter_init(tmp_path):
    """The LoRA tensors as attached, before any step (to show the twins moved)."""
    from hyft.trainer import Trainer

    d = merge_dict(base(steps=1), {"method": "lora", "train": {"output_dir": str(tmp_path / "init")}})
    (tmp_path / "init.yaml").write_text(yaml.safe_dump(d))
    tr = Trainer(load_config(tmp_path / "init.yaml"), model=tiny_model("llama"), tokenizer=byte_tokenizer())
    return [p.detach().clone() for n, p in tr.model.named_parameters() if "lora_" in n]


def merge_dict(a, b):
    from hyft.config import merge

    return merge(a, b)


def test_grid_from_a_probed_runs_step_size_scale(tmp_path):
    from runs import make_trainer

    info = make_trainer(tmp_path / "run", "hybrid", 2, ["--train.probe_every", "1"]).fit()
    scale = info["probe"]["median_zo_lr_scale"]
    grid = parse_grid([f"zo.lr=probe:{tmp_path / 'run'}", "fo.lr=1e-3"])
    assert grid["fo.lr"] == [1e-3]
    assert grid["zo.lr"] == [float(f"{scale * f:.2g}") for f in (1e-3, 1e-2, 1e-1, 1.0)]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["probe"]["median_zo_lr_scale"] == scale
    with pytest.raises(ConfigError, match="only works for zo.lr and fo.lr"):
        parse_grid([f"zo.mu=probe:{tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="cannot read"):
        parse_grid([f"zo.lr=probe:{tmp_path / 'nothing'}"])
    plain = make_trainer(tmp_path / "plain", "hybrid", 1).fit()
    assert plain["probe"] is None
    with pytest.raises(ConfigError, match="has no zo step-size scale"):
        parse_grid([f"zo.lr=probe:{tmp_path / 'plain'}"])
