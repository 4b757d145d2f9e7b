"""SIGTERM / SIGINT during `hyft train`: the step in flight finishes, a checkpoint is written, the process exits
143 / 130 printing the resume command, and resuming ends with the weights of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hyft import checkpoint as ck
from runs import assert_bit_identical, base_args, checkpoint_tensors, final_checkpoint, metrics, save_tiny

REPO = Path(__file__).resolve().parent.parent
STEPS = 40


def hyft(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}"
           f"{os.environ.get('PYTHONPATH', '')}"}  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "hyft", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def train_args(model: Path, out: Path) -> list[str]:
    extra = ["--model.name", str(model), "--train.log_every", "1", "--train.save_every", "10", "--zo.queries", "2",
             "--fo.optimizer", "adamw"]  # fmt: skip
    return ["train", *base_args(out, "hybrid", STEPS, extra)]


def wait_for_steps(proc: subprocess.Popen, out: Path, n: int) -> None:
    deadline = time.time() + 240
    while True:
        rows = (out / "metrics.jsonl").read_text().count("\n") if (out / "metrics.jsonl").exists() else 0
        if rows >= n:
            return
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.01)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_checkpoints_and_resume_matches_uninterrupted(tmp_path, sig, code):
    model = save_tiny(tmp_path / "tiny")
    ref = hyft(*train_args(model, tmp_path / "ref")) if sig == signal.SIGTERM else None
    run = hyft(*train_args(model, tmp_path / "run"))
    wait_for_steps(run, tmp_path / "run", 3)
    run.send_signal(sig)
    out, err = run.communicate(timeout=300)
    assert run.returncode == code, err
    stopped = ck.list_checkpoints(tmp_path / "run")[-1]
    step = int(stopped.name[len(ck.PREFIX) :])
    assert 3 <= step < STEPS  # the checkpoint is of the step in flight (not only the periodic ones, every 10)
    assert f"interrupted by {sig.name} after step {step}" in err
    assert f"resume with: hyft train --resume {tmp_path / 'run'}" in err
    assert [r["step"] for r in metrics(tmp_path / "run")][-1] == step  # the step in flight finished and was logged
    if ref is None:
        return
    resumed = hyft("train", "--resume", str(tmp_path / "run"))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    assert_bit_identical(
        checkpoint_tensors(final_checkpoint(tmp_path / "ref")), checkpoint_tensors(final_checkpoint(tmp_path / "run"))
    )
    assert metrics(tmp_path / "run") == metrics(tmp_path / "ref")
