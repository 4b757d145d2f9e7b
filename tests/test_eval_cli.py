import json
import statistics
from pathlib import Path

import pytest

from conftest import save_tiny_model
from hyft import tasks
from hyft.cli import main
from hyft.config import ModelConfig, load_config
from hyft.evaluate import EvalOptions, evaluate_examples
from hyft.models import load_model, output_head

DATA = "tests/fixtures/data"


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny random model and the byte tokenizer saved like any HF model directory."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=3)


def _direct_accuracy(model_dir, seed, n_test, calibrate=False):
    model, tok = load_model(ModelConfig(name=str(model_dir), device="cpu"))
    data = tasks.load_task("sst2", DATA, n_train=0, n_dev=0, n_test=n_test, seed=seed)
    return evaluate_examples(model, output_head(model), tok, data.test, EvalOptions(calibrate=calibrate))["accuracy"]


def test_eval_saved_model_multi_seed_table_and_json(saved_model, tmp_path, capsys):
    out = tmp_path / "e.json"
    argv = ["eval", "--model", str(saved_model), "--task", "sst2", "--data_dir", DATA, "--n_test", "8",
            "--seeds", "0,1,2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["source"]["kind"] == "model-dir" and res["seeds"] == [0, 1, 2]
    (task,) = res["results"]
    accs = [s["accuracy"] for s in task["seeds"]]
    assert [s["n"] for s in task["seeds"]] == [8, 8, 8]
    # Each seed is its own sample of the 16 test rows, and its accuracy is what direct evaluation gives.
    assert len({tuple(s["lines"]) for s in task["seeds"]}) == 3
    for seed, acc in zip([0, 1, 2], accs):
        assert acc == pytest.approx(_direct_accuracy(saved_model, seed, 8))
    assert task["summary"]["accuracy"]["mean"] == pytest.approx(statistics.mean(accs))
    assert task["summary"]["accuracy"]["std"] == pytest.approx(statistics.stdev(accs))
    assert "mean ± std" in printed and f"{statistics.mean(accs):.4f} ± {statistics.stdev(accs):.4f}" in printed


def test_eval_calibrate_reports_both(saved_model, tmp_path):
    out = tmp_path / "c.json"
    argv = ["eval", "--model", str(saved_model), "--task", "sst2", "--data_dir", DATA, "--n_test", "16",
            "--calibrate", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    (s,) = json.loads(out.read_text())["results"][0]["seeds"]
    assert s["accuracy"] == pytest.approx(_direct_accuracy(saved_model, 0, 16, calibrate=True))
    assert s["accuracy_uncalibrated"] == pytest.approx(_direct_accuracy(saved_model, 0, 16))
    assert s["calibration"] == {"content_free": "N/A"}


def _train_run(tmp_path, saved_model, method):
    from hyft.trainer import Trainer

    args = ["--method", method, "--model.name", str(saved_model), "--model.device", "cpu", "--data.data_dir", DATA,
            "--data.n_train", "16", "--data.n_dev", "4", "--data.n_test", "16", "--train.steps", "2",
            "--train.batch_size", "4", "--train.progress", "false", "--train.eval_before", "false",
            "--fo.lr", "0.05", "--train.output_dir", str(tmp_path / method)]  # fmt: skip
    tr = Trainer(load_config(None, args))
    info = tr.fit()
    return tr, info, tmp_path / method


def test_run_dir_without_saved_model_is_a_clear_error(saved_model, tmp_path, capsys):
    _, _, run = _train_run(tmp_path, saved_model, "lora")
    assert main(["eval", "--model", str(run)]) == 2
    err = capsys.readouterr().err
    assert "run directory but holds no saved model" in err and "export/merged" in err and "Traceback" not in err


def test_run_dir_with_exported_model_reproduces_the_runs_test_accuracy(saved_model, tmp_path):
    tr, info, run = _train_run(tmp_path, saved_model, "ft")
    tr.model.save_pretrained(run / "export" / "merged")
    tr.tokenizer.save_pretrained(run / "export" / "merged")
    assert main(["eval", "--model", str(run)]) == 0  # task, data dir, n_test and seed from the run's config.yaml
    res = json.loads((run / "eval_sst2_test.json").read_text())
    assert res["source"]["kind"] == "run-merged"
    assert res["results"][0]["seeds"][0]["accuracy"] == info["final"]["test"]


def test_run_dir_with_adapter_reproduces_the_runs_test_accuracy(saved_model, tmp_path):
    tr, info, run = _train_run(tmp_path, saved_model, "lora")
    tr.model.save_pretrained(run / "export" / "adapter")  # adapter_config.json names the saved base model
    out = tmp_path / "a.json"
    assert main(["eval", "--model", str(run), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["source"]["kind"] == "run-adapter"
    assert res["results"][0]["seeds"][0]["accuracy"] == info["final"]["test"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--task", "nope"], "unknown task 'nope'"),
        (["--task", "sst2", "--seeds", "0,x"], "--seeds"),
        (["--task", "user"], "needs a dataset spec"),
        ([], "--task is required"),
    ],
)
def test_bad_arguments_exit_2(saved_model, capsys, argv, message):
    assert main(["eval", "--model", str(saved_model), "--data_dir", DATA, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("hyft: error:") and "Traceback" not in err


@pytest.mark.parametrize("path", ["/nonexistent/model", "./no_such_dir", "missing.gguf"])
def test_missing_model_path_exits_2(capsys, path):
    assert main(["eval", "--model", path, "--task", "sst2"]) == 2
    err = capsys.readouterr().err
    assert f"{path} does not exist" in err


def test_directory_that_is_not_a_model_exits_2(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    assert main(["eval", "--model", str(tmp_path), "--task", "sst2"]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_eval_generation_task_from_config_reports_em_f1(saved_model, tmp_path, capsys):
    import yaml

    fx = Path("tests/fixtures/gen").resolve()
    cfg = {"data": {"task": "user", "max_new_tokens": 3, "dataset": {
        "type": "generation", "train": str(fx / "train.jsonl"), "test": str(fx / "test.jsonl"),
        "prompt_field": "question", "completion_field": "answer", "answers_field": "aliases"}}}  # fmt: skip
    (tmp_path / "gen.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "g.json"
    argv = ["eval", "--model", str(saved_model), "--config", str(tmp_path / "gen.yaml"), "--out", str(out)]
    assert main(argv) == 0
    (s,) = json.loads(out.read_text())["results"][0]["seeds"]
    assert s["metric"] == "exact_match" and s["n"] == 4 and {"exact_match", "f1"} <= set(s) and "accuracy" not in s
    header = capsys.readouterr().out.splitlines()[-4]
    assert "exact_match" in header and "f1" in header


def test_eval_ablate_zo_on_a_run_directory_matches_the_runs_own_ablation(saved_model, tmp_path, capsys):
    from runs import base_args

    run = tmp_path / "run"
    assert main(["train", *base_args(run, "hybrid", 4, ["--model.name", str(saved_model), "--zo.lr", "5e-2"])]) == 0
    own = json.loads((run / "run.json").read_text())["ablation"]["test"]
    out = tmp_path / "abl.json"
    assert main(["eval", "--model", str(run), "--ablate_zo", "--out", str(out)]) == 0
    assert "points" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())["ablation"]
    assert (row["updated_base"], row["original_base"]) == (own["updated_base"], own["original_base"])
    assert row["zo_points"] == own["zo_points"]


def test_eval_ablate_zo_needs_a_hybrid_run_directory(saved_model, tmp_path, capsys):
    from runs import base_args

    assert main(["eval", "--model", str(saved_model), "--task", "sst2", "--ablate_zo"]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    run = tmp_path / "lora"
    args = base_args(run, "lora", 2, ["--model.name", str(saved_model)])
    i = args.index("--zo.lr")
    assert main(["train", *args[:i], *args[i + 2 :]]) == 0
    assert main(["eval", "--model", str(run), "--ablate_zo"]) == 2
    assert "holds no ZO-updated base tensors" in capsys.readouterr().err
