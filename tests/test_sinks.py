"""wandb, mlflow and trackio beside TensorBoard, for real and offline: one tiny run reports to all four, and each
tracker's own store, read back through its own reader, holds exactly TensorBoard's scalars at the same steps; an
interrupted and resumed run continues the same tracker runs and sends no step twice."""

from __future__ import annotations

import json
import os
import struct
import uuid
from pathlib import Path

import pytest

from conftest import byte_tokenizer, tiny_model
from hyft.callbacks import Callback
from hyft.sinks import scalars, tag
from runs import base_args, make_trainer


def tensorboard_scalars(run: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return {k: {e.step: e.value for e in acc.Scalars(k)} for k in acc.Tags()["scalars"]}


def wandb_records(run_dir: Path):
    """The protobuf records of an offline run's .wandb file (W&B's own Record type), read from its LevelDB-style
    log: 32 KiB blocks of 7-byte-headed chunks (FULL=1, FIRST=2, MIDDLE=3, LAST=4) after a 7-byte file header."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = next(run_dir.glob("*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    block, pos, buf = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record
            buf = b""


def wandb_scalars(out: Path, parts: int = 1) -> tuple[dict[str, dict[int, float]], dict]:
    """Every offline run directory's history, joined: `parts` directories (one per process that logged), all of one
    run id, and no step logged twice."""
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == parts
    series: dict[str, dict[int, float]] = {}
    config, ids = {}, set()
    for run in runs:
        for r in wandb_records(run):
            kind = r.WhichOneof("record_type")
            if kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                step = items.pop("_step")
                for k, v in items.items():
                    if not k.startswith("_"):
                        assert step not in series.get(k, {}), (k, step)
                        series.setdefault(k, {})[step] = float(v)
            elif kind in ("config", "run"):
                items = r.config.update if kind == "config" else r.run.config.update
                config.update({i.key: json.loads(i.value_json) for i in items})
                if kind == "run":
                    ids.add(r.run.run_id)
    assert len(ids) == 1, ids
    return series, config


def mlflow_scalars(uri: str, project: str, name: str) -> tuple[dict[str, dict[int, float]], dict]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(project)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == name and run.info.status == "FINISHED"
    series = {}
    for k in run.data.metrics:
        history = client.get_metric_history(run.info.run_id, k)
        series[k] = {m.step: m.value for m in history}
        assert len(series[k]) == len(history), k  # no step twice
    return series, run.data.params


def trackio_scalars(project: str) -> dict[str, dict[int, float]]:
    import trackio
    from trackio.sqlite_storage import SQLiteStorage

    (run,) = list(trackio.Api().runs(project))
    series: dict[str, dict[int, float]] = {}
    for row in SQLiteStorage.get_logs(project, run.name, run_id=run.id):
        for k, v in row.items():
            if k not in ("step", "timestamp") and isinstance(v, (int, float)):
                assert row["step"] not in series.get(k, {}), (k, row["step"])
                series.setdefault(k, {})[row["step"]] = float(v)
    return series


def assert_same_as_tensorboard(tb, skip_values=(), **trackers) -> None:
    for name, got in trackers.items():
        assert set(got) == set(tb), name
        for k in tb:
            assert got[k].keys() == tb[k].keys(), (name, k)
            for step, v in tb[k].items():  # TensorBoard stores float32
                if k in skip_values:
                    continue
                assert got[k][step] == pytest.approx(v, rel=1e-6, abs=1e-7), (name, k, step)


@pytest.fixture
def tracker_env(tmp_path, monkeypatch):
    """Every tracker offline/local under tmp_path, in a project of its own (trackio's deleted afterwards)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for var in ("WANDB_MODE", "WANDB_SILENT"):
        monkeypatch.delenv(var, raising=False)  # hyft sets them; restored after the test
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # read when trackio is first imported
    project = f"hyft-test-{uuid.uuid4().hex[:8]}"
    yield project
    import trackio

    trackio.delete_project(project, force=True)


def test_every_tracker_holds_tensorboards_scalars(tmp_path, tracker_env):
    project = tracker_env
    out = tmp_path / "run"
    extra = ["--train.report_to", "tensorboard,wandb,mlflow,trackio", "--train.eval_every", "3",
             "--train.tracker_project", project, "--train.run_name", "tiny"]  # fmt: skip
    make_trainer(out, "hybrid", 6, extra).fit()
    assert os.environ["WANDB_MODE"] == "offline"  # set by hyft before wandb was imported

    tb = tensorboard_scalars(out)
    assert {"train/loss", "zo/projected_grad", "lr/fo", "eval/dev_accuracy"} <= set(tb)
    assert sorted(tb["train/loss"]) == [2, 4, 6]
    wb, wb_config = wandb_scalars(out)
    ml, ml_params = mlflow_scalars(f"sqlite:///{(out / 'mlflow.db').resolve()}", project, "tiny")
    assert_same_as_tensorboard(tb, wandb=wb, mlflow=ml, trackio=trackio_scalars(project))
    assert wb_config["zo"].get("value", wb_config["zo"])["lr"] == 1e-3 and ml_params["zo.lr"] == "0.001"


class Crash(Callback):
    """Stops the run with an error before step `at` + 1, as a crash would: after the sinks have had step `at`."""

    def __init__(self, at: int):
        self.at = at

    def on_step_begin(self, tr) -> None:
        if tr.step == self.at:
            raise RuntimeError("crash for the test")


def test_a_resumed_run_continues_its_tracker_runs_and_sends_no_step_twice(tmp_path, tracker_env):
    from mlflow.tracking import MlflowClient

    from hyft.config import load_config
    from hyft.trainer import Trainer

    project, out = tracker_env, tmp_path / "run"
    uri = f"sqlite:///{(out / 'mlflow.db').resolve()}"
    # logs at 2, 4, 6, 8 and a dev evaluation at 4 (two records at one step); checkpoint at 4; the crash after 6
    args = base_args(out, "hybrid", 8, ["--train.report_to", "tensorboard,wandb,mlflow,trackio",
                     "--train.eval_every", "4", "--train.save_every", "4", "--train.tracker_project", project,
                     "--train.run_name", "tiny"])  # fmt: skip
    with pytest.raises(RuntimeError, match="crash for the test"):
        Trainer(load_config(None, args), model=tiny_model(), tokenizer=byte_tokenizer(), callbacks=[Crash(6)]).fit()
    saved = json.loads((out / "trackers.json").read_text())
    assert saved["sent"] == {n: [6, 1] for n in ("wandb", "mlflow", "trackio")}
    client = MlflowClient(uri)
    (first,) = client.search_runs([client.get_experiment_by_name(project).experiment_id])
    assert first.info.status == "KILLED"  # stopped before its end, not finished
    assert sorted(m.step for m in client.get_metric_history(first.info.run_id, "train/loss")) == [2, 4, 6]

    tr = Trainer(load_config(None, args), model=tiny_model(), tokenizer=byte_tokenizer())
    assert tr.resume(out).name == "step-00000004"
    tr.fit()

    tb = tensorboard_scalars(out)  # the resumed run's own values (TensorBoard drops what followed the checkpoint)
    assert sorted(tb["train/loss"]) == [2, 4, 6, 8] and sorted(tb["eval/dev_accuracy"]) == [4]
    wb, _ = wandb_scalars(out, parts=2)  # one offline directory per process, one run id
    ml, _ = mlflow_scalars(uri, project, "tiny")  # the same MLflow run, FINISHED now
    # the values the interrupted run sent after step 4 are the resumed run's, bit for bit, but for the clock
    assert_same_as_tensorboard(tb, ("train/elapsed_s",), wandb=wb, mlflow=ml, trackio=trackio_scalars(project))
    assert json.loads((out / "trackers.json").read_text())["runs"] == saved["runs"]


def test_a_tracker_left_out_of_a_resume_keeps_its_run_for_a_later_one(tmp_path, tracker_env):
    from hyft.config import load_config
    from hyft.trainer import Trainer

    project, out = tracker_env, tmp_path / "run"

    def run(trackers, steps, crash=None):
        args = base_args(out, "hybrid", steps, ["--train.report_to", trackers, "--train.save_every", "2",
                         "--train.tracker_project", project, "--train.run_name", "tiny"])  # fmt: skip
        tr = Trainer(load_config(None, args), model=tiny_model(), tokenizer=byte_tokenizer(),
                     callbacks=[Crash(crash)] if crash else [])  # fmt: skip
        if (out / "checkpoints").is_dir():
            tr.resume(out)
        if crash:
            with pytest.raises(RuntimeError, match="crash for the test"):
                tr.fit()
        else:
            tr.fit()
        return json.loads((out / "trackers.json").read_text())

    first = run("mlflow,trackio", 8, crash=3)  # logged 2; checkpoint 2
    second = run("mlflow", 8, crash=5)  # resumed from 2 without trackio; logged 4; checkpoint 4
    assert second["runs"] == first["runs"] and second["sent"] == {"mlflow": [4, 1], "trackio": [2, 1]}
    run("mlflow,trackio", 8)  # trackio named again: its run continues from step 6 (4 went by without it)
    ml, _ = mlflow_scalars(f"sqlite:///{(out / 'mlflow.db').resolve()}", project, "tiny")
    assert sorted(ml["train/loss"]) == [2, 4, 6, 8] and sorted(trackio_scalars(project)["train/loss"]) == [2, 6, 8]


def test_a_new_run_in_an_old_directory_starts_new_tracker_runs(tmp_path, tracker_env):
    project, out = tracker_env, tmp_path / "run"
    extra = ["--train.report_to", "mlflow", "--train.tracker_project", project, "--train.run_name", "tiny"]
    make_trainer(out, "hybrid", 2, extra).fit()
    first = json.loads((out / "trackers.json").read_text())["runs"]["mlflow"]["run_id"]
    make_trainer(out, "hybrid", 2, [*extra, "--train.overwrite", "true"]).fit()
    assert json.loads((out / "trackers.json").read_text())["runs"]["mlflow"]["run_id"] != first
    make_trainer(out, "hybrid", 2, ["--train.overwrite", "true"]).fit()  # no trackers: no stale ids left behind
    assert not (out / "trackers.json").exists()


def test_scalars_follow_tensorboard_names():
    rec = {"step": 4, "loss": 0.5, "epoch": 1, "zo_projected_grad": 0.1, "lr_fo": 1e-3, "eval_dev_accuracy": 0.75,
           "note": "text", "flag": True}  # fmt: skip
    assert scalars(rec, 0) == {"train/loss": 0.5, "train/epoch": 1.0, "zo/projected_grad": 0.1, "lr/fo": 1e-3,
                               "eval/dev_accuracy": 0.75}  # fmt: skip
    assert scalars({"step": 5, "skipped": True, "loss": "nan"}, 2) == {"guard/skipped_steps": 2.0}
    assert tag("probe_drift") == "probe/drift" and tag("elapsed_s") == "train/elapsed_s"


def test_unknown_tracker_is_refused_before_anything_runs(tmp_path):
    from hyft.config import load_config
    from hyft.errors import ConfigError
    from hyft.validate import check_config

    cfg = load_config(None, ["--train.report_to", "wandb,comet"])
    with pytest.raises(ConfigError, match="--train.report_to: unknown value 'comet'; choose from tensorboard, wandb"):
        check_config(cfg)


def test_a_tracker_without_its_package_is_named_with_the_install_command(monkeypatch):
    from hyft import sinks

    assert sinks.check_installed(["tensorboard", "wandb", "mlflow", "trackio"]) is None
    monkeypatch.setitem(sinks.PACKAGES, "mlflow", "no_such_package_hyft")
    msg = sinks.check_installed(["wandb", "mlflow"])
    assert msg == "mlflow needs its package: pip install 'hyft[trackers]' (or pip install no_such_package_hyft)"
