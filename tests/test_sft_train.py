"""Training and evaluating on SFT data end to end: the tiny model learns a conversation (loss on assistant turns
falls), text rows report token accuracy, and the CLI refuses a classification loss for SFT data."""

from __future__ import annotations

import json

import pytest

from conftest import byte_tokenizer, tiny_model
from hyft.cli import main
from hyft.config import load_config
from hyft.errors import ConfigError
from hyft.trainer import Trainer

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def chats(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}]}
            for w in ("yes", "no", "ok", "hi")[:n]] * 4  # fmt: skip


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def args(tmp_path, train: str, steps: int, extra=()):
    return [
        "--method", "ft", "--data.task", "user", "--data.dataset", json.dumps({"type": "sft", "train": train}),
        "--data.loss", "lm", "--data.n_train", "16", "--data.n_dev", "4", "--data.n_test", "0",
        "--data.max_new_tokens", "4", "--train.steps", str(steps), "--train.batch_size", "4",
        "--train.log_every", "1", "--train.output_dir", str(tmp_path / "run"), "--train.progress", "false",
        "--train.eval_before", "false", "--fo.optimizer", "adamw", "--fo.lr", "1e-2", *extra,
    ]  # fmt: skip


def test_chat_sft_loss_falls_and_evaluates_by_generation(tmp_path):
    tok = byte_tokenizer()
    tok.chat_template = TEMPLATE
    cfg = load_config(None, args(tmp_path, write(tmp_path / "c.jsonl", chats(4)), 12))
    info = Trainer(cfg, model=tiny_model(), tokenizer=tok).fit()
    losses = [json.loads(r)["loss"] for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(r)]  # fmt: skip
    assert len(losses) == 12 and losses[-1] < 0.7 * losses[0]
    dev = [e for e in json.loads((tmp_path / "run" / "eval.json").read_text()) if e["split"] == "dev"][-1]
    assert dev["metric"] == "exact_match" and dev["n"] == 4
    assert dev["samples"][0]["prompt"].endswith("<|assistant|>")  # generated from the rendered chat prompt
    assert info["final"]["dev"] == dev["exact_match"]


def test_text_sft_reports_token_accuracy(tmp_path):
    rows = [{"text": "the cat sat on the mat"}, {"text": "a dog ran"}] * 8
    cfg = load_config(None, args(tmp_path, write(tmp_path / "t.jsonl", rows), 2, ["--train.eval_every", "1"]))
    Trainer(cfg, model=tiny_model(), tokenizer=byte_tokenizer()).fit()
    dev = json.loads((tmp_path / "run" / "eval.json").read_text())[-1]
    assert dev["metric"] == "token_accuracy" and 0 <= dev["token_accuracy"] <= 1 and dev["loss"] > 0
    logged = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_dev_token_accuracy" in r and "eval_dev_loss" in r for r in logged)


def test_sft_needs_the_lm_loss(tmp_path, capsys):
    from hyft.validate import validate

    cfg = load_config(None, args(tmp_path, write(tmp_path / "c.jsonl", chats(2)), 1, ["--data.loss", "classification"]))
    with pytest.raises(ConfigError, match="data.loss: an sft dataset trains on its tokens"):
        validate(cfg)


def test_cli_exits_2_on_a_bad_role(tmp_path, capsys):
    from conftest import save_tiny_model

    model = save_tiny_model(tmp_path / "m")
    bad = write(tmp_path / "c.jsonl", [{"messages": [{"role": "human", "content": "x"}]}])
    argv = ["train", *args(tmp_path, bad, 1), "--model.name", str(model)]
    assert main(argv) == 2
    assert "c.jsonl:1: field 'messages[0].role': unknown role 'human'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_chat_example_config_validates_and_loads_its_data(tmp_path):
    from hyft.validate import validate

    cfg = load_config("examples/sft_chat_smollm2.yaml", ["--train.output_dir", str(tmp_path / "run")])
    data = validate(cfg)
    assert (len(data.train), len(data.dev)) == (24, 4)
    assert all(e.meta["conversation"]["messages"][0]["role"] == "system" for e in data.train)
