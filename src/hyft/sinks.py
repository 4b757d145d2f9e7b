"""Experiment trackers beside metrics.jsonl and TensorBoard, under the HF Trainer's `report_to` names: wandb, mlflow
and trackio, each in its offline/local mode unless the user's own environment points it elsewhere.

A sink is anything with `log(scalars, step)` and `close()`; the trainer calls `Sinks.log` with every metrics.jsonl
record and each sink gets the same scalars, under the same names, as TensorBoard (`scalars`). Where each writes:

    wandb    OUTPUT_DIR/wandb/offline-run-*   (WANDB_MODE=offline unless set; upload later: wandb sync DIR)
    mlflow   sqlite:///OUTPUT_DIR/mlflow.db   (unless MLFLOW_TRACKING_URI is set; view: mlflow ui --backend-store-uri)
    trackio  trackio's local store, $TRACKIO_DIR or ~/.cache/huggingface/trackio   (view: trackio show)

The offline switches are set before each package is imported, so a machine without network never waits on one.

A resumed run continues the tracker runs it started: each sink reports what identifies its run (`state`), the
Trackers callback keeps that in OUTPUT_DIR/trackers.json, and a sink opened with `resume=` reopens that run (W&B by
id, MLflow by run id, trackio by name) instead of starting another.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Protocol

TRACKERS = ("wandb", "mlflow", "trackio")
PACKAGES = {"wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}

_TB = {"loss": "train/loss", "epoch": "train/epoch", "forwards": "train/forwards", "backwards": "train/backwards"}


def tag(key: str) -> str:
    """TensorBoard's name for a metrics.jsonl field (train/loss, zo/projected_grad, lr/fo, eval/dev_accuracy)."""
    if key in _TB:
        return _TB[key]
    for prefix, section in (("zo_", "zo/"), ("lr_", "lr/"), ("eval_", "eval/"), ("probe_", "probe/")):
        if key.startswith(prefix):
            return section + key[len(prefix) :]
    return f"train/{key}"


def scalars(record: dict[str, Any], skipped_steps: int) -> dict[str, float]:
    """What TensorBoard gets from one metrics.jsonl record: a skipped step's count, else every numeric field."""
    if record.get("skipped"):  # a skipped step's loss is not a training curve point
        return {"guard/skipped_steps": float(skipped_steps)}
    return {tag(k): float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}  # fmt: skip


class Sink(Protocol):
    def log(self, values: dict[str, float], step: int) -> None: ...

    def state(self) -> dict[str, Any]:
        """What reopens this run after an interruption (JSON), passed back as `resume=`."""
        ...

    def close(self, finished: bool = True) -> None:
        """finished False: the run stops before its end (an error, a signal) and will be resumed, not completed."""
        ...


def offline_env(name: str) -> None:
    """The environment a tracker reads at import: local modes, no network calls, unless the user chose otherwise."""
    if name == "wandb":
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")  # the run's directory is passed to wandb.init, not set here
    elif name == "mlflow":
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    elif name == "trackio":
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


class WandbSink:
    def __init__(self, out: Path, project: str, run_name: str, config: dict[str, Any], resume: dict | None = None):
        offline_env("wandb")
        import wandb

        # resumed: the same run id (offline, another offline-run-* directory of that id; `wandb sync` joins them)
        again = {"id": resume["id"], "resume": "allow"} if resume else {}
        self.run = wandb.init(project=project, name=run_name, dir=str(out), config=config,
                              mode=os.environ.get("WANDB_MODE", "offline"), reinit="create_new", **again)  # fmt: skip
        self.dir = Path(self.run.dir).parent  # OUTPUT_DIR/wandb/offline-run-*/

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def state(self) -> dict[str, Any]:
        return {"id": self.run.id}

    def close(self, finished: bool = True) -> None:
        self.run.finish(exit_code=0 if finished else 1)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:6000]  # MLflow's limit on a param value
    return out


class MlflowSink:
    def __init__(self, out: Path, project: str, run_name: str, config: dict[str, Any], resume: dict | None = None):
        offline_env("mlflow")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(out / 'mlflow.db').resolve()}"
        # a client of its own, not mlflow's global active run: two runs in one process stay apart
        self.client = MlflowClient(self.uri)
        self.closed = False
        if resume and resume.get("uri") == self.uri and self._exists(resume["run_id"]):
            self.run_id = resume["run_id"]  # params stay as logged: MLflow refuses to change a logged value
            self.client.update_run(self.run_id, status="RUNNING")
            return
        exp = self.client.get_experiment_by_name(project)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(project)
        self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        params = [Param(k, v) for k, v in _flat(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException:  # deleted, or another store: a new run
            return False

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def state(self) -> dict[str, Any]:
        return {"uri": self.uri, "run_id": self.run_id}

    def close(self, finished: bool = True) -> None:
        if not self.closed:
            self.client.set_terminated(self.run_id, status="FINISHED" if finished else "KILLED")
            self.closed = True


class TrackioSink:
    def __init__(self, out: Path, project: str, run_name: str, config: dict[str, Any], resume: dict | None = None):
        offline_env("trackio")
        import trackio

        # space_id / server_url stay unset: local SQLite store, no server and no upload
        again = {"project": resume["project"], "name": resume["name"], "resume": "allow"} if resume else {}
        self.run = trackio.init(**{"project": project, "name": run_name, **again}, config=config,
                                auto_log_gpu=False, auto_log_cpu=False)  # fmt: skip
        self.project, self.name = again.get("project", project), self.run.name

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def state(self) -> dict[str, Any]:
        return {"project": self.project, "name": self.name}

    def close(self, finished: bool = True) -> None:
        self.run.finish()


SINKS = {"wandb": WandbSink, "mlflow": MlflowSink, "trackio": TrackioSink}


class Sinks:
    """The run's trackers; a no-op when report_to names none of them."""

    def __init__(self, sinks: dict[str, Sink] | None = None):
        self.sinks = dict(sinks or {})

    def state(self) -> dict[str, dict]:
        return {n: s.state() for n, s in self.sinks.items()}

    @classmethod
    def open(cls, names: list[str], out: Path, *, project: str, run_name: str | None, config: dict[str, Any],
             resume: dict[str, dict] | None = None):  # fmt: skip
        """resume: {tracker name: its sink's earlier `state()`}; a tracker missing from it starts a new run."""
        run_name = run_name or Path(out).resolve().name
        resume = resume or {}
        return cls({n: SINKS[n](Path(out), project, run_name, config, resume=resume.get(n)) for n in names
                    if n in SINKS})  # fmt: skip

    def log(self, values: dict[str, float], step: int, only: set[str] | None = None) -> None:
        for n, s in self.sinks.items():
            if only is None or n in only:
                s.log(values, step)

    def log_record(self, record: dict[str, Any], skipped_steps: int, only: set[str] | None = None) -> None:
        if self.sinks:
            self.log(scalars(record, skipped_steps), record["step"], only)

    def close(self, finished: bool = True) -> None:
        sinks, self.sinks = self.sinks, {}
        for s in sinks.values():
            s.close(finished)


def check_installed(names: list[str]) -> str | None:
    """The first tracker in `names` whose package is missing, with the install command, else None."""
    import importlib.util

    for n in names:
        if n in PACKAGES and importlib.util.find_spec(PACKAGES[n]) is None:
            return f"{n} needs its package: pip install 'hyft[trackers]' (or pip install {PACKAGES[n]})"
    return None
