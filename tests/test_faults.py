"""Storage faults in long runs: a disk that fills up at any write of a checkpoint (or of metrics.jsonl / run.json),
and checkpoint files or ledgers that are torn or changed afterwards. Faults are injected, not hoped for."""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from hyft import checkpoint as ck
from hyft.cli import main
from hyft.errors import StorageError
from runs import assert_bit_identical, base_args, checkpoint_tensors, final_checkpoint, make_trainer, metrics, save_tiny

ENOSPC = os.strerror(errno.ENOSPC)
WRITE_MODES = set("wax+")


class DiskFull:
    """Counts every write operation done while active and makes the `fail_at`-th one fail the way it fails on a full
    disk: Python-level writes raise OSError(ENOSPC) (a write() first writes half its data, as a short write would);
    the native writers (safetensors, tokenizers) leave a truncated file and raise what they raise for an OS error.

    Write operations: open() for writing and each write() on such a file (builtins.open and io.open, which pathlib
    uses), os.open with a write flag, os.fsync, os.mkdir of a new directory, os.rename, os.replace, safetensors'
    save_file (hyft's and peft's import) and the tokenizers backend's save. `log` lists (kind, path) for each."""

    def __init__(self, monkeypatch, fail_at: int | None = None):
        self.mp, self.fail_at, self.n, self.log, self.active = monkeypatch, fail_at, 0, [], False
        self.failed: tuple[str, str] | None = None
        real_open = io.open

        def point(kind: str, path) -> bool:
            if not self.active:
                return False
            self.n += 1
            self.log.append((kind, str(path)))
            if self.n == self.fail_at:
                self.failed = (kind, str(path))
                self.active = False  # the failure's own clean-up writes are not faults
                return True
            return False

        self.point = point

        def fail(path):
            raise OSError(errno.ENOSPC, ENOSPC, str(path))

        class Writer:
            def __init__(self, f, path):
                self._f, self._path = f, path

            def write(self, data):
                if point("write", self._path):
                    self._f.write(data[: len(data) // 2])
                    self._f.flush()
                    fail(self._path)
                return self._f.write(data)

            def __getattr__(self, name):
                return getattr(self._f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._f.close()

            def __iter__(self):
                return iter(self._f)

        def fake_open(file, mode="r", *args, **kw):
            if isinstance(file, int) or not WRITE_MODES & set(mode):
                return real_open(file, mode, *args, **kw)
            if point("open", file):
                fail(file)
            return Writer(real_open(file, mode, *args, **kw), file)

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(io, "open", fake_open)

        def wrap_os(name, path_arg=True):
            real = getattr(os, name)

            def fake(*args, **kw):
                if name == "open" and not args[1] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                    return real(*args, **kw)
                if name == "mkdir" and os.path.isdir(args[0]):  # writes nothing (EEXIST), a full disk or not
                    return real(*args, **kw)
                if point(name, args[0] if path_arg else f"fd {args[0]}"):
                    fail(args[0] if path_arg else "")
                return real(*args, **kw)

            monkeypatch.setattr(os, name, fake)

        for name in ("open", "mkdir", "rename", "replace"):
            wrap_os(name)
        wrap_os("fsync", path_arg=False)

        import peft.peft_model
        import safetensors.torch
        from safetensors import SafetensorError
        from transformers.tokenization_utils_tokenizers import TokenizersBackend

        real_save = safetensors.torch.save_file

        def save_file(tensors, filename, metadata=None):
            if point("safetensors", filename):
                real_save(tensors, filename, metadata=metadata)
                os.truncate(filename, os.path.getsize(filename) // 2)
                raise SafetensorError(f"Error while serializing: I/O error: {ENOSPC} (os error {errno.ENOSPC})")
            return real_save(tensors, filename, metadata=metadata)

        monkeypatch.setattr(safetensors.torch, "save_file", save_file)
        monkeypatch.setattr(peft.peft_model, "safe_save_file", save_file)

        class Backend:
            def __init__(self, tok):
                self._tok = tok

            def save(self, path, *args, **kw):
                if point("tokenizers", path):
                    self._tok.save(path, *args, **kw)
                    os.truncate(path, os.path.getsize(path) // 2)
                    raise Exception(f"{ENOSPC} (os error {errno.ENOSPC})")
                return self._tok.save(path, *args, **kw)

            def __getattr__(self, name):
                return getattr(self._tok, name)

        monkeypatch.setattr(TokenizersBackend, "backend_tokenizer", property(lambda s: Backend(s._tokenizer)))

    def __enter__(self):
        self.active = True
        return self

    def __exit__(self, *exc):
        self.active = False


def _digest(c: Path) -> dict[str, str]:
    files = [f for f in c.rglob("*") if f.is_file()]
    return {f.relative_to(c).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _fresh_verify(c: Path) -> None:
    ck._verified.clear()  # hash again, no memo
    ck.verify(c)


@pytest.mark.parametrize("case", ["new step", "same step again"])
def test_disk_full_at_every_write_of_a_checkpoint(tmp_path, monkeypatch, case):
    run = tmp_path / "run"
    tr = make_trainer(run, steps=6, extra=["--train.keep_checkpoints", "3"])
    tr.prepare_output()
    tr.train_step()
    first = tr.save_checkpoint()
    tr.train_step()
    with DiskFull(monkeypatch) as counting:  # nothing fails: enumerate the write points of one checkpoint
        second = tr.save_checkpoint()
    points = counting.log
    monkeypatch.undo()
    # every file of the checkpoint was written by an enumerated point (so the enumeration misses no writer)
    tmp = f".tmp-{second.name}-{os.getpid()}"
    written = {p.split(tmp + "/", 1)[1] for _, p in points if tmp + "/" in p}
    assert set(ck.verify(second)["files"]) <= written
    assert len(points) >= 40  # 51 with the libraries of this writing
    kinds = {k for k, _ in points}
    assert {"open", "write", "fsync", "mkdir", "rename", "safetensors", "tokenizers"} <= kinds, kinds
    want = checkpoint_tensors(second)
    if case == "new step":
        shutil.rmtree(second)
        previous, visible = first, [first]
    else:  # a resumed run writes a step whose checkpoint exists: it is swapped out, which must be undone on failure
        previous, visible = second, [first, second]
    before = {c: _digest(c) for c in visible}
    metrics_before = (run / "metrics.jsonl").read_bytes()
    n = len(points) + (case == "same step again")  # ... and the swap adds one rename
    for i in range(1, n + 1):
        inj = DiskFull(monkeypatch, fail_at=i)
        with inj, pytest.raises(StorageError) as e:
            tr.save_checkpoint()
        monkeypatch.undo()
        assert inj.failed is not None, f"point {i} of {n} never reached"
        msg = str(e.value)
        assert e.value.exit_code == 4 and e.value.errno == errno.ENOSPC and ENOSPC in msg, msg
        assert str(run) in msg and "disk full" in msg
        found = ck.list_checkpoints(run)
        late = inj.failed[0] == "fsync" and any(k == "rename" for k, _ in inj.log[:-1]) and found != visible
        if late:  # only the directory fsync after the rename failed: the new checkpoint is complete and visible
            assert found == [*visible[:1], second] and inj.log[-1][0] == "fsync"
            assert_bit_identical(checkpoint_tensors(second), want)
            _fresh_verify(second)
            if case == "new step":
                shutil.rmtree(second)
            continue
        assert found == visible, (i, inj.failed)
        assert f"the latest complete checkpoint is still {previous}" in msg
        for c in visible:
            assert _digest(c) == before[c], (i, inj.failed)  # not a byte of what was saved changed
            _fresh_verify(c)
        leftovers = [p.name for p in (run / ck.SUBDIR).iterdir() if p.name.startswith((".tmp-", ".old-"))]
        assert not leftovers, (i, inj.failed)
        assert (run / "metrics.jsonl").read_bytes() == metrics_before
    # after all that, the run resumes from the previous checkpoint and writes the very checkpoint it failed to write
    tr2 = make_trainer(run, steps=6, extra=["--train.keep_checkpoints", "3"])
    tr2.resume(previous)
    tr2.prepare_output()
    while tr2.step < 2:
        tr2.train_step()
    assert_bit_identical(checkpoint_tensors(tr2.save_checkpoint()), want)


def test_disk_full_through_the_cli_exits_4_then_resume_is_bit_identical(tmp_path, monkeypatch, capsys):
    model = save_tiny(tmp_path / "tiny")
    args = lambda out: ["train", *base_args(out, steps=6), "--model.name", str(model), "--train.save_every", "2"]
    real = ck.write_tensors

    def full_at_step_4(tensors, path, metadata=None):
        if "step-00000004" in str(path):
            raise OSError(errno.ENOSPC, ENOSPC, str(path))
        real(tensors, path, metadata)

    monkeypatch.setattr(ck.weights, "write_tensors", full_at_step_4)
    assert main(args(tmp_path / "run")) == 4
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("hyft: error: ") and "No space left on device" in err[0], err
    assert f"still {ck.checkpoint_dir(tmp_path / 'run', 2)}" in err[0]
    assert f"hyft train --resume {tmp_path / 'run'}" in err[0]
    assert [p.name for p in ck.list_checkpoints(tmp_path / "run")] == ["step-00000002"]
    monkeypatch.undo()
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0
    assert main(args(tmp_path / "ref")) == 0
    assert_bit_identical(
        checkpoint_tensors(final_checkpoint(tmp_path / "ref")), checkpoint_tensors(final_checkpoint(tmp_path / "run"))
    )
    assert metrics(tmp_path / "run") == metrics(tmp_path / "ref")


def test_disk_full_while_logging_or_writing_run_json_keeps_what_was_saved(tmp_path, monkeypatch):
    run = tmp_path / "run"
    tr = make_trainer(run, steps=6)
    tr.prepare_output()
    for s in (1, 2):
        tr.train_step()
        tr.log({"step": s, "loss": 0.5})
    tr.save_checkpoint()
    saved = (run / "metrics.jsonl").read_text()
    for i in (1, 2):  # the open, the write (half a line lands on disk)
        with DiskFull(monkeypatch, fail_at=i), pytest.raises(StorageError, match="metrics.jsonl.*No space") as e:
            tr.log({"step": 3, "loss": 0.25})
        monkeypatch.undo()
        assert e.value.exit_code == 4
        assert (run / "metrics.jsonl").read_text().startswith(saved)
    # run.json / eval.json / the resume's rewrite of metrics.jsonl are replaced at once: the old file survives
    ck.write_text_atomically(run / "run.json", '{"old": true}')
    with DiskFull(monkeypatch) as counting:
        ck.write_text_atomically(run / "run.json", '{"old": true}')
    monkeypatch.undo()
    for i in range(1, counting.n + 1):
        with DiskFull(monkeypatch, fail_at=i), pytest.raises(StorageError, match="run.json is unchanged"):
            ck.write_text_atomically(run / "run.json", json.dumps({"new": "x" * 1000}))
        monkeypatch.undo()
        assert json.loads((run / "run.json").read_text()) == {"old": True}
        assert not [p for p in run.iterdir() if p.name.startswith(".run.json.tmp")]
    # resuming drops the torn half line, keeps every saved one, and appends again
    tr2 = make_trainer(run, steps=6)
    tr2.resume(run)
    tr2.prepare_output()
    assert (run / "metrics.jsonl").read_text() == saved


# -- torn and corrupted files ------------------------------------------------------------------------------------------
def _two_checkpoints(tmp_path) -> tuple[Path, Path]:
    model = save_tiny(tmp_path / "tiny")
    out = tmp_path / "run"
    assert main(["train", *base_args(out, steps=4), "--model.name", str(model), "--train.save_every", "2"]) == 0
    return out, model


def _flip(path: Path, where: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) - 10 if where is None else where
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def _change_digit(path: Path) -> None:
    """One digit of the last number in a JSON file (still valid JSON, same size: only a checksum can tell)."""
    text = path.read_text()
    i = max(i for i, ch in enumerate(text) if ch.isdigit())
    path.write_text(text[:i] + ("1" if text[i] != "1" else "2") + text[i + 1 :])


def _errors(err: str) -> list[str]:
    return [line for line in err.strip().splitlines() if line.startswith("hyft:")]


_SHARD = "base/model-00001-of-00001.safetensors"
DAMAGE = {  # what to do to the latest checkpoint, the file the message must name, what it must say
    "truncated base shard": (lambda c: os.truncate(c / _SHARD, 5000), _SHARD, "truncated"),
    "flipped byte in base shard": (lambda c: _flip(c / _SHARD), _SHARD, "sha256 differs"),
    "flipped byte in adapter": (lambda c: _flip(c / "adapter/adapter_model.safetensors"), "adapter/", "sha256 differs"),
    "flipped byte in RNG state": (lambda c: _flip(c / "trainer.safetensors"), "trainer.safetensors", "sha256 differs"),
    "flipped byte in trainer.json": (lambda c: _flip(c / "trainer.json", 40), "trainer.json", "sha256 differs"),
    "changed digit in ledger": (lambda c: _change_digit(c / "ledger.json"), "ledger.json", "sha256 differs"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_latest_checkpoint_is_named_and_the_previous_one_resumes(tmp_path, capsys, case):
    out, model = _two_checkpoints(tmp_path)
    damage, name, what = DAMAGE[case]
    latest = ck.list_checkpoints(out)[-1]
    damage(latest)
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--train.steps", "6"]) == 2
    lines = _errors(capsys.readouterr().err)
    assert len(lines) == 1 and what in lines[0], lines
    err = lines[0]
    assert f"{latest}/{name}" in err
    assert ck.list_checkpoints(out) == [ck.checkpoint_dir(out, 2), latest]  # refused: nothing was changed
    command = re.search(r"continue from it with  (hyft train --resume \S+)", err).group(1)
    assert command == f"hyft train --resume {ck.checkpoint_dir(out, 2)}"
    assert main([*command.split()[1:], "--train.steps", "6"]) == 0  # the command it printed works
    assert "moved the damaged checkpoint" in capsys.readouterr().err
    assert (out / ck.SUBDIR / f"corrupt-{latest.name}").is_dir()  # kept for inspection, never picked again
    assert [p.name for p in ck.list_checkpoints(out)] == ["step-00000004", "step-00000006"]
    ref = tmp_path / "ref"
    assert main(["train", *base_args(ref, steps=6), "--model.name", str(model), "--train.save_every", "2"]) == 0
    assert_bit_identical(checkpoint_tensors(final_checkpoint(ref)), checkpoint_tensors(final_checkpoint(out)))
    assert metrics(out) == metrics(ref)


def test_export_and_replay_name_the_damaged_file(tmp_path, capsys):
    out, model = _two_checkpoints(tmp_path)
    latest = ck.list_checkpoints(out)[-1]
    good = (latest / "ledger.json").read_text()
    _change_digit(latest / "ledger.json")
    assert main(["replay", str(out), "--base", str(model), "--out", str(tmp_path / "r")]) == 2
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and f"{latest / 'ledger.json'}: " in err[0] and "sha256" in err[0], err
    (latest / "ledger.json").write_text(good)  # back as it was
    _flip(latest / "adapter" / "adapter_model.safetensors")
    assert main(["export", str(out), "--peft", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "adapter_model.safetensors: sha256 differs" in err and "step-00000002" in err


def test_checkpoints_and_ledgers_without_checksums_still_load(tmp_path):
    """Written before checksums existed: sizes only in the marker, no sha256 in the ledger."""
    out, _ = _two_checkpoints(tmp_path)
    c = ck.list_checkpoints(out)[-1]
    info = json.loads((c / ck.MARKER).read_text())
    del info["sha256"]
    (c / ck.MARKER).write_text(json.dumps(info))
    doc = json.loads((c / "ledger.json").read_text())
    del doc["sha256"]
    (c / "ledger.json").write_text(json.dumps(doc))
    info["files"]["ledger.json"] = (c / "ledger.json").stat().st_size
    (c / ck.MARKER).write_text(json.dumps(info))
    from hyft.replay import read_ledger

    assert "sha256" not in read_ledger(c / "ledger.json") and "sha256" not in ck.verify(c)
    assert main(["train", "--resume", str(out), "--train.steps", "6"]) == 0
    assert [p.name for p in ck.list_checkpoints(out)] == ["step-00000004", "step-00000006"]


def test_ledger_carries_its_own_checksum(tmp_path):
    from hyft.replay import read_ledger

    out, _ = _two_checkpoints(tmp_path)
    copy = tmp_path / "ledger.json"  # a ledger copied out of its checkpoint: no marker next to it
    shutil.copy(ck.list_checkpoints(out)[-1] / "ledger.json", copy)
    doc = read_ledger(copy)
    assert len(doc["sha256"]) == 64
    text = copy.read_text()
    _change_digit(copy)  # one digit of the last update's last coefficient
    with pytest.raises(ck.CheckpointError, match="does not match the sha256 recorded in it"):
        read_ledger(copy)
    copy.write_text(text[: len(text) // 2])  # torn
    with pytest.raises(ck.CheckpointError, match="not a readable ledger"):
        read_ledger(copy)


def test_a_crash_between_the_two_renames_of_a_same_step_rewrite_loses_nothing(tmp_path):
    """Writing a step whose checkpoint exists moves the old one to .old-step-N-PID, then renames the new one in;
    a process killed in between leaves no step-N: the next start puts the old one back instead of deleting it."""
    run = tmp_path / "run"
    tr = make_trainer(run, steps=6)
    tr.prepare_output()
    tr.train_step()
    tr.save_checkpoint()
    tr.train_step()
    c = tr.save_checkpoint()
    want = checkpoint_tensors(c)
    os.rename(c, c.parent / f".old-{c.name}-99999")  # the state right after the first rename
    shutil.copytree(ck.checkpoint_dir(run, 1), c.parent / f".tmp-{c.name}-99999")  # and the new one not yet in
    tr2 = make_trainer(run, steps=6)
    tr2.resume(run)  # the start puts step 2 back before looking for the latest checkpoint
    assert tr2.step == 2
    tr2.prepare_output()  # and the garbage goes
    assert sorted(p.name for p in c.parent.iterdir()) == ["step-00000001", "step-00000002"]
    _fresh_verify(c)
    assert_bit_identical(checkpoint_tensors(c), want)
