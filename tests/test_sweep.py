import csv
import json
import math

import pytest
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
    real_fit = sweep.SweepTrainer.fit

    def fit(self):
        info = real_fit(self)
        info["final"]["dev"] = next(devs)
        return info

    monkeypatch.setattr(sweep.SweepTrainer, "fit", fit)
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
