"""The loop's callbacks (callbacks.py): the hooks fire in order, a callback can stop a run and is still closed, and
the experiment runners extend the Trainer by callbacks, not subclasses."""

import pytest

from hyft.callbacks import Callback, MetricsFile, RunFiles, RunReport, TensorBoard
from hyft.trainer import Trainer
from runs import make_trainer, metrics


class Recorder(Callback):
    def __init__(self, stop_at: int | None = None):
        self.calls: list[tuple] = []
        self.stop_at = stop_at

    def on_prepare_output(self, tr):
        self.calls.append(("prepare", tr.step))

    def on_train_begin(self, tr):
        self.calls.append(("begin", tr.step))

    def on_step_begin(self, tr):
        self.calls.append(("step_begin", tr.step))

    def on_update(self, tr, result):
        self.calls.append(("update", tr.step, result.applied))

    def on_log(self, tr, record):
        self.calls.append(("log", record["step"]))

    def on_evaluate(self, tr, report):
        self.calls.append(("evaluate", report["split"], report["step"]))

    def on_save(self, tr, path):
        self.calls.append(("save", path.name))

    def on_step_end(self, tr, result):
        self.calls.append(("step_end", tr.step))
        if tr.step == self.stop_at:
            raise KeyboardInterrupt("stop here")

    def on_train_end(self, tr, info):
        self.calls.append(("end", info["steps"]))

    def on_close(self, tr):
        self.calls.append(("close",))


def test_hooks_fire_in_loop_order(tmp_path):
    rec = Recorder()
    tr = make_trainer(tmp_path / "run", "hybrid", 4, ["--train.save_every", "2", "--train.eval_every", "2"])
    tr.callbacks.append(rec)
    tr.fit()
    step = lambda s, *mid: [("step_begin", s - 1), ("update", s, True), *mid, ("step_end", s)]
    want = [
        ("prepare", 0), ("begin", 0),
        *step(1), *step(2, ("log", 2), ("evaluate", "dev", 2), ("log", 2), ("save", "step-00000002")),
        *step(3), *step(4, ("log", 4)), ("save", "step-00000004"),
        ("evaluate", "dev", 4), ("evaluate", "test", 4), ("end", 4), ("close",),
    ]  # fmt: skip
    assert rec.calls == want
    assert [type(c) for c in tr.callbacks[:3]] == [RunFiles, MetricsFile, RunReport]  # the run's own sinks come first
    assert [r["step"] for r in metrics(tmp_path / "run")] == [2, 2, 4]


def test_a_callback_can_stop_the_run_and_every_callback_is_closed(tmp_path):
    rec = Recorder(stop_at=2)
    tr = make_trainer(tmp_path / "run", "lora", 5, [])
    tr.callbacks.append(rec)
    with pytest.raises(KeyboardInterrupt, match="stop here"):
        tr.fit()
    assert rec.calls[-2:] == [("step_end", 2), ("close",)] and tr.step == 2
    assert not (tmp_path / "run" / "run.json").exists()  # RunReport writes it only for a finished run


def test_tensorboard_is_a_sink_chosen_by_report_to(tmp_path):
    tr = make_trainer(tmp_path / "run", "lora", 2, ["--train.report_to", "tensorboard"])
    assert [type(c) for c in tr.callbacks] == [RunFiles, MetricsFile, TensorBoard, RunReport]
    tr.fit()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert tr.callbacks[2].writer is None  # closed


def test_experiment_runners_extend_the_trainer_by_callbacks_not_subclasses():
    import hyft.compare
    import hyft.hf_trainer  # noqa: F401 (subclasses transformers.Trainer, not this one)
    import hyft.sweep

    assert [c for c in Trainer.__subclasses__() if c.__module__.startswith("hyft")] == []
    assert issubclass(hyft.compare.CurveRecorder, Callback) and issubclass(hyft.sweep.DivergenceStop, Callback)
