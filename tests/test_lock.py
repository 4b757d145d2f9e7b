"""One writer per output directory (hyft/lock.py): a second `hyft train` or `hyft compare` on a directory in use is
refused, naming the holder; the lock never outlives its process, however that process ends."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hyft import checkpoint as ck
from hyft import lock
from hyft.cli import main
from runs import base_args, save_tiny

REPO = Path(__file__).resolve().parent.parent
PYTHONPATH = f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": PYTHONPATH}


def holder(directory: Path) -> subprocess.Popen:
    """Another process that takes the directory's lock and then sleeps."""
    code = (
        "import sys, time; from hyft import lock; lock.acquire(sys.argv[1], 'the test holder'); "
        "print('held', flush=True); time.sleep(600)"
    )
    p = subprocess.Popen([sys.executable, "-c", code, str(directory)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_writer_is_refused_and_sigkill_frees_the_lock(tmp_path):
    d = tmp_path / "out"
    p = holder(d)
    try:
        with pytest.raises(lock.DirectoryInUse) as e:
            lock.acquire(d, "second")
        msg = str(e.value)
        assert f"pid {p.pid} on {socket.gethostname()} (the test holder)" in msg and str(d) in msg
        assert not lock.held(d)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    lock.acquire(d, "after the kill")  # the kernel dropped the dead holder's lock: no stale lock to clean up
    try:
        assert lock.held(d)
        lock.acquire(d, "again, same process")  # re-entrant within a process
        lock.release(d)
        assert lock.held(d)
    finally:
        lock.release(d)
    assert not lock.held(d)


def _train(out: Path, model: Path, steps: int, *extra: str) -> list[str]:
    return ["train", *base_args(out, steps=steps), "--model.name", str(model), *extra]


def test_second_hyft_train_is_refused_while_the_first_runs_and_after_its_sigkill_resume_works(tmp_path, capsys):
    model = save_tiny(tmp_path / "tiny")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "hyft", *_train(out, model, 400, "--train.save_every", "2")]
    first = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not ck.list_checkpoints(out):
            assert first.poll() is None, first.communicate()
            assert time.time() < deadline
            time.sleep(0.02)
        for argv in (
            _train(out, model, 4, "--train.overwrite", "true"),  # would delete the running run's checkpoints
            ["train", "--resume", str(out)],
        ):
            assert main(argv) == 2
            err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hyft:")]
            who = f"{out}: in use by pid {first.pid} on {socket.gethostname()} (hyft train)"
            assert len(err) == 1 and who in err[0], err
        assert first.poll() is None  # undisturbed
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    last = int(ck.list_checkpoints(out)[-1].name[len(ck.PREFIX) :])
    assert main(["train", "--resume", str(out), "--train.steps", str(last + 2)]) == 0


def test_second_hyft_compare_on_a_study_folder_in_use_is_refused(tmp_path, capsys):
    out = tmp_path / "study"
    p = holder(out)
    try:
        model = save_tiny(tmp_path / "tiny")  # small, so that a lock that failed to refuse would not run for long
        argv = ["compare", "--methods", "lora", "--tasks", "sst2", "--seeds", "0", "--out", str(out), "--model.name",
                str(model), "--data.data_dir", "tests/fixtures/data", "--train.steps", "1"]  # fmt: skip
        assert main([*argv, "--dry_run"]) == 0  # only reads: allowed
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{out}: in use by pid {p.pid}" in err and "(the test holder)" in err
    finally:
        p.kill()
        p.wait()
