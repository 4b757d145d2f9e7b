"""Callbacks: how a run's outputs, metric sinks and the experiment runners hook into the training loop.

The Trainer (trainer.py) is wiring and a loop; everything else that reacts to the loop is a Callback passed in
`Trainer(cfg, callbacks=[...])`. Every hook is a no-op by default, so a callback overrides only what it needs, and
the Trainer is never subclassed for this. Hooks run in list order: the Trainer's own sinks (below) first.

    on_prepare_output(tr)      the output directory is being set up (fresh or resumed): main rank only, and an
                               error raised here reaches every rank
    on_train_begin(tr)         the directory is ready, before the first step (or the first step after a resume)
    on_step_begin(tr)          before each step
    on_update(tr, result)      right after the step's update (tr.step already counts it), before its logs
    on_log(tr, record)         a metrics record (one line of metrics.jsonl): main rank only
    on_evaluate(tr, report)    an evaluation on the run's curve (periodic and final; not the ZO ablation's)
    on_save(tr, path)          a checkpoint was written
    on_step_end(tr, result)    the step is done (logged, evaluated, checkpointed); raise here to stop the run
    on_train_end(tr, info)     final evaluations done; `info` is run.json's content
    on_close(tr)               always, last (also after an error): release what the callback holds

The run's own callbacks, in this order: RunFiles (the output directory's policy and config.yaml), MetricsFile
(metrics.jsonl), TensorBoard (with train.report_to tensorboard), Trackers (wandb / mlflow / trackio) and RunReport
(eval.json, run.json). A new sink is a Callback here and a choice on train.report_to (config.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from hyft.checkpoint import SUBDIR, remove_stale, set_aside_damaged, storage_error, write_text_atomically
from hyft.config import save_config
from hyft.errors import ConfigError
from hyft.sinks import Sinks
from hyft.sinks import tag as tb_tag  # TensorBoard's names, which the trackers share
from hyft.step import StepResult

# The hooks' `tr` is the hyft.trainer.Trainer running the loop; not imported here, even for typing, so this module
# stays below trainer.py (callbacks are built before the Trainer that calls them).
Trainer = Any


class Callback:
    def on_prepare_output(self, tr: Trainer) -> None: ...
    def on_train_begin(self, tr: Trainer) -> None: ...
    def on_step_begin(self, tr: Trainer) -> None: ...
    def on_update(self, tr: Trainer, result: StepResult) -> None: ...
    def on_log(self, tr: Trainer, record: dict[str, Any]) -> None: ...
    def on_evaluate(self, tr: Trainer, report: dict[str, Any]) -> None: ...
    def on_save(self, tr: Trainer, path: Path) -> None: ...
    def on_step_end(self, tr: Trainer, result: StepResult) -> None: ...
    def on_train_end(self, tr: Trainer, info: dict[str, Any]) -> None: ...
    def on_close(self, tr: Trainer) -> None: ...


def row_step(line: str) -> int:
    """The step of a metrics.jsonl line; a line cut by a kill mid-write counts as after every step."""
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 1 << 62


def holds_run(out: Path) -> bool:
    """Whether a directory holds (part of) a hyft run: its config, metrics, results or checkpoints."""
    return any((out / f).exists() for f in ("run.json", "config.yaml", "metrics.jsonl", SUBDIR))


class RunFiles(Callback):
    """The output directory's policy: a new run refuses a directory holding another run unless train.overwrite
    (then deletes its checkpoints, which must never be resumed from); a resumed run continues its files, dropping
    half-written checkpoints and setting aside those after the one it resumed from. Writes config.yaml."""

    def on_prepare_output(self, tr: Trainer) -> None:
        out = tr.out
        if tr.resumed_from is not None:
            out.mkdir(parents=True, exist_ok=True)
            remove_stale(out)
            set_aside_damaged(out, tr.step)  # resumed from an older one because the latest is damaged
        else:
            if holds_run(out) and not tr.cfg.train.overwrite:
                raise ConfigError(
                    f"train.output_dir: {out} already holds a run; pass --train.overwrite true, "
                    f"resume it with hyft train --resume {out}, or choose another directory"
                )
            out.mkdir(parents=True, exist_ok=True)
            for stale in (SUBDIR, "tensorboard"):
                shutil.rmtree(out / stale, ignore_errors=True)
            (out / Trackers.FILE).unlink(missing_ok=True)  # the old run's tracker ids: never continued by a new run
        tmp = tr.out / f".config.yaml.tmp-{os.getpid()}"  # replaced at once: a full disk leaves the old one
        save_config(tr.cfg, tmp)
        os.replace(tmp, tr.out / "config.yaml")


class MetricsFile(Callback):
    """OUTPUT_DIR/metrics.jsonl: one JSON line per metrics record. A resumed run drops what was logged after its
    checkpoint, so a resumed run's file equals an uninterrupted one's."""

    def on_prepare_output(self, tr: Trainer) -> None:
        path = tr.out / "metrics.jsonl"
        if tr.resumed_from is None:
            path.write_text("")
            return
        rows = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        write_text_atomically(path, "".join(r + "\n" for r in rows if row_step(r) <= tr.step))

    def on_log(self, tr: Trainer, record: dict[str, Any]) -> None:
        try:  # a line cut by a full disk is dropped at resume (row_step); the lines before it are untouched
            with open(tr.out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            last = tr.last_checkpoint
            then = f"; the latest checkpoint is {last} (resume: hyft train --resume {tr.out})" if last else ""
            raise storage_error(e, tr.out / "metrics.jsonl", f"the metrics of step {record['step']}", then) from None


class TensorBoard(Callback):
    """OUTPUT_DIR/tensorboard (train.report_to tensorboard): every numeric field of every metrics record, and the
    ZO ablation's points at the end."""

    def __init__(self) -> None:
        self.writer = None

    def on_prepare_output(self, tr: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(tr.out / "tensorboard"), purge_step=tr.step + 1 if tr.step else None)

    def on_log(self, tr: Trainer, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        if record.get("skipped"):  # a skipped step's loss is not a training curve point
            self.writer.add_scalar("guard/skipped_steps", tr.guard.skipped, record["step"])
        else:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(tb_tag(key), value, record["step"])
        self.writer.flush()  # a killed run keeps what it logged (log lines are few)

    def on_train_end(self, tr: Trainer, info: dict[str, Any]) -> None:
        ablation = info.get("ablation")
        if self.writer is not None and ablation and "skipped" not in ablation:
            # an end-of-run figure like the final accuracies: run.json and TensorBoard, not metrics.jsonl
            for split, r in ablation.items():
                self.writer.add_scalar(f"ablation/{split}_zo_points", r["zo_points"], tr.step)
        self.on_close(tr)

    def on_close(self, tr: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Trackers(Callback):
    """wandb / mlflow / trackio (train.report_to; sinks.py, each in its offline/local mode): the scalars TensorBoard
    gets, under its names, and the ZO ablation's points at the end.

    A resumed run continues the tracker runs it started (OUTPUT_DIR/trackers.json: each run's id and the last record
    sent to it) and sends no record twice: what the interrupted run had sent after its checkpoint is not sent again
    (at equal thread counts the resumed run's values are bit-identical to those; metrics.jsonl and TensorBoard hold
    the resumed run's own). A tracker first named at the resume starts a run of its own at the resumed step."""

    FILE = "trackers.json"

    def __init__(self) -> None:
        self.sinks = Sinks()
        self.sent: dict[str, tuple[int, int]] = {}  # tracker -> (step, nth record at that step) last sent to it
        self.seen = (0, 0)  # the same for the records logged by this process
        self.saved: dict[str, Any] = {}  # trackers.json as the resumed run found it

    def on_prepare_output(self, tr: Trainer) -> None:
        t = tr.cfg.train
        saved = self._read(tr.out) if tr.resumed_from is not None else {}
        runs = saved.get("runs", {})
        self.sinks = Sinks.open(t.report_to, tr.out, project=t.tracker_project, run_name=t.run_name,
                                config=tr.cfg.to_dict(), resume=runs)  # fmt: skip
        state = self.sinks.state()
        # a run the tracker could not reopen (a new MLflow store, a deleted run) is a new run: it gets everything
        self.sent = {n: tuple(saved.get("sent", {}).get(n, (0, 0))) if state[n] == runs.get(n) else (0, 0)
                     for n in state}  # fmt: skip
        self.saved = saved
        self._write(tr.out)

    def on_log(self, tr: Trainer, record: dict[str, Any]) -> None:
        step = record["step"]
        self.seen = (step, self.seen[1] + 1 if self.seen[0] == step else 1)
        due = {n for n, last in self.sent.items() if self.seen > last}
        if not due:
            return
        self.sinks.log_record(record, tr.guard.skipped, due)
        for n in due:
            self.sent[n] = self.seen
        self._write(tr.out)  # a kill between the send and this write resends one record at the resume

    def on_train_end(self, tr: Trainer, info: dict[str, Any]) -> None:
        ablation = info.get("ablation")
        if ablation and "skipped" not in ablation:
            self.sinks.log({f"ablation/{s}_zo_points": r["zo_points"] for s, r in ablation.items()}, tr.step)
        self.sinks.close(finished=True)

    def on_close(self, tr: Trainer) -> None:
        self.sinks.close(finished=False)  # after on_train_end nothing is left open: only an interrupted run gets here

    def _read(self, out: Path) -> dict[str, Any]:
        try:
            saved = json.loads((out / self.FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # a run from before trackers.json, or a file cut by a kill: new tracker runs
            return {}
        return saved if isinstance(saved, dict) else {}

    def _write(self, out: Path) -> None:
        # trackers left out of this resume keep their saved runs, for a later resume that names them again
        runs = {**self.saved.get("runs", {}), **self.sinks.state()}
        sent = {**self.saved.get("sent", {}), **{n: list(v) for n, v in self.sent.items()}}
        state = {"runs": runs, "sent": sent}
        write_text_atomically(out / self.FILE, json.dumps(state, indent=1))


class RunReport(Callback):
    """OUTPUT_DIR/eval.json (every evaluation) and run.json (written last: its presence means the run finished)."""

    def on_train_end(self, tr: Trainer, info: dict[str, Any]) -> None:
        if not tr.is_main:
            return
        write_text_atomically(tr.out / "eval.json", json.dumps(tr.evals, indent=1))
        write_text_atomically(tr.out / "run.json", json.dumps(info, indent=1))
        if info["checkpoint"]:
            c = info["checkpoint"]
            print(
                f"[hyft] checkpoint {c['path']}: base {size(c['base_safetensors_bytes'])} safetensors; seed "
                f"ledger {size(c['ledger_bytes'])} ({c['ledger_updates']} ZO updates, replays the ZO tensors "
                "from the original: hyft replay)"
            )


def size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
