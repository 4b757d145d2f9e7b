"""hyft eval --harness: lm-evaluation-harness on a saved tiny model with a local task YAML over local data (offline),
against hyft's own scorer on the same examples and template: same accuracy, same per-choice log-likelihoods."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from conftest import save_tiny_model
from hyft.cli import main

REVIEWS = ["loved it", "hated it", "a fine film", "dull and slow", "great fun", "awful", "so good", "meh at best",
           "wonderful acting", "boring", "a delight", "too long"]  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    model = save_tiny_model(root / "model")
    data = root / "reviews.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(REVIEWS)))
    (root / "tasks").mkdir()
    for name, choices in (("hyft_reviews", ["negative", "positive"]), ("hyft_reviews_short", ["bad", "great"])):
        task = {
            "task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "Review: {{text}}\nSentiment:",
            "doc_to_choice": choices, "doc_to_target": "label",
            "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
        }  # fmt: skip
        (root / "tasks" / f"{name}.yaml").write_text(yaml.safe_dump(task))
    return root, model, data


def hyft_scores(model_dir, data, candidates):
    """hyft's per-candidate scores (mean log-likelihood per token) and token counts, in file order."""
    from hyft.config import ModelConfig
    from hyft.evaluate import candidate_scores
    from hyft.models import load_model, output_head
    from hyft.scoring import encode
    from hyft.tasks import load_user_task

    spec = {"type": "classification", "train": str(data), "test": str(data), "template": "Review: {text}\nSentiment:",
            "candidates": candidates, "label_field": "label"}  # fmt: skip
    examples = sorted(load_user_task(spec, n_train=None, n_dev=0, n_test=None).test, key=lambda e: e.meta["line"])
    model, tok = load_model(ModelConfig(name=str(model_dir), device="cpu"))
    enc = [encode(tok, e, 256) for e in examples]
    scores = candidate_scores(model, output_head(model), enc, tok.pad_token_id)
    lengths = [[len(t) for _, t in e.pairs] for e in enc]
    return examples, scores, lengths


@pytest.mark.parametrize(
    "task, candidates, metric",
    [("hyft_reviews", [" negative", " positive"], "acc"), ("hyft_reviews_short", [" bad", " great"], "acc_norm")],
)
def test_harness_matches_hyfts_scorer(setup, tmp_path, task, candidates, metric, capsys):
    root, model, data = setup
    out = tmp_path / "h.json"
    argv = ["eval", "--model", str(model), "--harness", task, "--harness_include", str(root / "tasks"),
            "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert f"{metric}," in capsys.readouterr().out.replace(" ", ",")  # the table printed

    examples, scores, lengths = hyft_scores(model, data, candidates)
    preds = [max(range(len(s)), key=s.__getitem__) for s in scores]
    hyft_acc = sum(p == e.label for p, e in zip(preds, examples)) / len(examples)
    assert res["results"][task][f"{metric},none"] == pytest.approx(hyft_acc)
    # the numbers under the accuracies: lm-eval's summed log-likelihood of each choice = hyft's mean x tokens
    samples = sorted(res["samples"][task], key=lambda s: s["doc_id"])
    assert len(samples) == len(examples)
    for s, sc, n in zip(samples, scores, lengths):
        lls = [float(r[0]) for r in s["filtered_resps"]]
        assert lls == pytest.approx([m * k for m, k in zip(sc, n)], rel=1e-4, abs=1e-4)
    if metric == "acc_norm":  # unequal lengths: summed and per-token choices may differ, per byte = per token here
        assert any(n[0] != n[1] for n in lengths)


def test_harness_errors(setup, tmp_path, capsys):
    root, model, _ = setup
    base = ["eval", "--model", str(model), "--out", str(tmp_path / "x.json")]
    assert main([*base, "--harness", "no_such_task", "--harness_include", str(root / "tasks")]) == 2
    assert "unknown lm-eval task(s) ['no_such_task']" in capsys.readouterr().err
    assert main([*base, "--harness", "hyft_reviews", "--harness_include", str(tmp_path / "nowhere")]) == 2
    assert "--harness_include" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_harness_on_a_lora_adapter_merges_it(setup, tmp_path):
    """An exported adapter (adapter_config.json naming its base) is evaluated as base + adapter, merged."""
    import torch
    from peft import LoraConfig, get_peft_model

    from hyft.config import ModelConfig
    from hyft.harness import plain_model
    from hyft.models import load_model

    root, model_dir, _ = setup
    base, _ = load_model(ModelConfig(name=str(model_dir), device="cpu"))
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(model_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits
        got = plain_model(peft_model)(input_ids=ids).logits
    assert torch.allclose(want, got, atol=1e-5)
    out = tmp_path / "a.json"
    argv = ["eval", "--model", str(tmp_path / "adapter"), "--harness", "hyft_reviews", "--harness_include",
            str(root / "tasks"), "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    acc = json.loads(out.read_text())["results"]["hyft_reviews"]["acc,none"]
    assert 0 <= acc <= 1 and not math.isnan(acc)


def test_prompt_tuning_adapters_are_refused(setup):
    from peft import PromptTuningConfig, get_peft_model

    from conftest import tiny_model
    from hyft.errors import ConfigError
    from hyft.harness import plain_model

    pt = get_peft_model(tiny_model(), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    with pytest.raises(ConfigError, match="prompt-tuning adapter prepends virtual tokens"):
        plain_model(pt)


def test_harness_limit_fewshot_and_chat_template(setup, tmp_path):
    from transformers import AutoTokenizer

    root, model, _ = setup
    import shutil

    chat = tmp_path / "chat_model"
    shutil.copytree(model, chat)
    tok = AutoTokenizer.from_pretrained(chat)
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}[assistant]"
    tok.save_pretrained(chat)
    out = tmp_path / "h.json"
    argv = ["eval", "--model", str(chat), "--harness", "hyft_reviews", "--harness_include", str(root / "tasks"),
            "--limit", "3", "--num_fewshot", "1", "--apply_chat_template", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    res = json.loads(out.read_text())
    samples = res["samples"]["hyft_reviews"]
    assert len(samples) == 3
    prompt = samples[0]["arguments"][0][0]  # (context, choice) of the first choice
    assert prompt.startswith("[user]Review: ") and prompt.endswith("Sentiment:[assistant]")
    assert prompt.count("Review: ") == 2  # one shot, then the question
