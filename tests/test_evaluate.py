import json
import math
import statistics
from pathlib import Path

import pytest
import torch

from conftest import byte_tokenizer, tiny_model
from hyft import scoring, tasks
from hyft.evaluate import (
    EvalOptions,
    argmax_predictions,
    candidate_scores,
    content_free_priors,
    evaluate_examples,
    predict,
)
from hyft.generation import cut_at_stop, generate_answers, greedy_generate, is_generation, left_pad
from hyft.models import output_head
from hyft.report import fmt_mean_std, mean_std
from hyft.tasks.base import Example

DATA = "tests/fixtures/data"
TASKS_DATA = "tests/tasks/fixtures"
GEN = Path("tests/fixtures/gen").resolve()


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama").eval()


def _sst2(tok, n=24):
    data = tasks.load_task("sst2", DATA, n_train=0, n_dev=0, n_test=n, seed=0)
    return data.test, [scoring.encode(tok, e, 64) for e in data.test]


def _full_logits_score(model, ctx, cont):
    """Reference: one sequence, full logits at every position, mean log p of the continuation tokens."""
    ids = torch.tensor([list(ctx) + list(cont)])
    with torch.no_grad():
        lp = model(input_ids=ids).logits[0].float().log_softmax(-1)
    return sum(lp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont)) / len(cont)


def count_forwards(model):
    n = {"F": 0}
    model.get_input_embeddings().register_forward_hook(lambda *a: n.__setitem__("F", n["F"] + 1))
    return n


# -- calibration -------------------------------------------------------------------------------------------------------
def test_calibration_subtracts_each_candidates_content_free_score(model, tok):
    head = output_head(model)
    examples, enc = _sst2(tok)
    cf_ids = tok("N/A")["input_ids"]
    scores = candidate_scores(model, head, enc, tok.pad_token_id, max_sequences=7)
    priors = content_free_priors(model, head, enc, cf_ids, tok.pad_token_id)
    # The prior of each candidate is its score after the content-free context, computed independently here.
    ref = [_full_logits_score(model, cf_ids, t) for _, t in enc[0].pairs]
    for p in priors:
        assert p == pytest.approx(ref, abs=1e-5)
    assert abs(ref[0] - ref[1]) > 1e-3  # the two verbalizers have different priors, so calibration matters
    calibrated = argmax_predictions(scores, priors)
    want = [max(range(2), key=lambda k: s[k] - p[k]) for s, p in zip(scores, priors)]
    assert calibrated == want
    raw = argmax_predictions(scores)
    assert calibrated != raw  # on this fixture the priors flip some predictions of the random model

    rep = evaluate_examples(model, head, tok, examples, EvalOptions(max_length=64, calibrate=True))
    labels = [e.label for e in enc]
    assert rep["accuracy"] == pytest.approx(sum(int(a == b) for a, b in zip(want, labels)) / len(labels))
    assert rep["accuracy_uncalibrated"] == pytest.approx(sum(int(a == b) for a, b in zip(raw, labels)) / len(labels))
    plain = evaluate_examples(model, head, tok, examples, EvalOptions(max_length=64))
    assert plain["accuracy"] == rep["accuracy_uncalibrated"] and "accuracy_uncalibrated" not in plain


def test_content_free_context_gives_zero_calibrated_scores(model, tok):
    """An example whose context is the content-free input itself has calibrated scores exactly 0."""
    head = output_head(model)
    ex = Example.shared_context("N/A", [" terrible", " great", " fine"], 2)
    enc = [scoring.encode(tok, ex, 64)]
    scores = candidate_scores(model, head, enc, tok.pad_token_id)
    priors = content_free_priors(model, head, enc, tok("N/A")["input_ids"], tok.pad_token_id)
    assert scores == priors
    cal = scoring.calibrate(torch.tensor(scores[0]), torch.tensor(priors[0]))
    assert torch.equal(cal, torch.zeros(3))


def test_calibration_leaves_shared_continuation_tasks_unchanged(model, tok):
    head = output_head(model)
    data = tasks.load_task("winogrande", TASKS_DATA, n_train=0, n_dev=0, n_test=None, seed=0, size="xs")
    enc = [scoring.encode(tok, e, 96) for e in data.test]
    priors = content_free_priors(model, head, enc, tok("N/A")["input_ids"], tok.pad_token_id)
    assert all(p[0] == p[1] for p in priors)
    scores = candidate_scores(model, head, enc, tok.pad_token_id)
    assert argmax_predictions(scores, priors) == argmax_predictions(scores)


def test_priors_cost_one_forward_per_distinct_candidate_set(tok):
    m = tiny_model("llama").eval()
    n = count_forwards(m)
    _, enc = _sst2(tok)
    content_free_priors(m, output_head(m), enc, tok("N/A")["input_ids"], tok.pad_token_id)
    assert n["F"] == 1


def test_predict_matches_one_batch_training_scores(model, tok):
    head = output_head(model)
    _, enc = _sst2(tok)
    with torch.no_grad():
        batch = scoring.collate(enc, tok.pad_token_id)
        want = scoring.candidate_logits(scoring.sequence_scores(model, head, batch), batch.offsets).argmax(-1).tolist()
    assert predict(model, head, enc, tok.pad_token_id, max_sequences=5) == want


@pytest.mark.parametrize("task", ["sst2", "copa", "winogrande", "cb", "rte"])
def test_shared_inputs_give_the_training_scores_from_fewer_sequences(model, tok, task):
    from hyft.evaluate import collate_distinct

    head = output_head(model)
    root = DATA if task == "sst2" else TASKS_DATA
    opts = {"size": "xs"} if task == "winogrande" else {}
    data = tasks.load_task(task, root, n_train=0, n_dev=0, n_test=None, seed=0, **opts)
    enc = [scoring.encode(tok, e, 128) for e in data.test]
    with torch.no_grad():
        batch = scoring.collate(enc, tok.pad_token_id)
        want = scoring.sequence_scores(model, head, batch).tolist()
    got = [x for s in candidate_scores(model, head, enc, tok.pad_token_id, max_sequences=4) for x in s]
    assert got == pytest.approx(want, abs=1e-5)
    distinct, _ = collate_distinct(enc, tok.pad_token_id)
    one_token = all(len(t) == 1 for e in enc for _, t in e.pairs)
    shared_context = all(len({c for c, _ in e.pairs}) == 1 for e in enc)
    if one_token and shared_context:  # verbalizer tasks: one sequence per example instead of one per candidate
        assert distinct.input_ids.shape[0] == len(enc) < batch.input_ids.shape[0]
    else:
        assert distinct.input_ids.shape[0] <= batch.input_ids.shape[0]


def test_one_token_verbalizers_need_one_sequence_per_example(tok):
    from hyft.evaluate import collate_distinct

    exs = [Example.shared_context(f"review {i}: fine{'!' * i} Answer:", ["A", "B", "C"], i % 3) for i in range(6)]
    enc = [scoring.encode(tok, e, 64) for e in exs]
    assert all(len(t) == 1 for e in enc for _, t in e.pairs)
    distinct, owner = collate_distinct(enc, tok.pad_token_id)
    assert (
        distinct.input_ids.shape[0] == 6 and distinct.lengths.tolist() == [1] * 18 and owner.tolist() == list(range(18))
    )
    n = count_forwards(m := tiny_model("llama").eval())
    got = candidate_scores(m, output_head(m), enc, tok.pad_token_id)
    assert n["F"] == 1
    with torch.no_grad():
        batch = scoring.collate(enc, tok.pad_token_id)
        want = scoring.sequence_scores(m, output_head(m), batch).tolist()
    assert [x for s in got for x in s] == pytest.approx(want, abs=1e-5) and batch.input_ids.shape[0] == 18


# -- generation --------------------------------------------------------------------------------------------------------
def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_cut_at_stop():
    assert cut_at_stop("Paris\nQuestion: x", ["\n"]) == "Paris"
    assert cut_at_stop("a. b\nc", ["\n", "."]) == "a"
    assert cut_at_stop("no stop", ["\n", ""]) == "no stop"


@pytest.mark.parametrize("kind", ["llama", "opt"])
def test_batched_left_padded_generation_equals_one_at_a_time(tok, kind):
    m = tiny_model(kind).eval()
    prompts = [tok(t)["input_ids"] for t in ("Q: a\nA:", "Question: what is it?\nAnswer:", "x", "The sky is")]
    kw = dict(pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, max_new_tokens=6)
    batched = greedy_generate(m, prompts, batch_size=4, **kw)
    single = greedy_generate(m, prompts, batch_size=1, **kw)
    assert batched == single
    assert all(len(t) <= 6 for t in batched) and single[1]
    # Reference for one prompt: step-by-step argmax with full forwards.
    ids = list(prompts[1])
    with torch.no_grad():
        for _ in range(len(single[1])):
            ids.append(int(m(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    assert ids[len(prompts[1]) :] == single[1]


def _gen_task(n_test=None):
    spec = {
        "type": "generation", "train": str(GEN / "train.jsonl"), "test": str(GEN / "test.jsonl"),
        "template": "Question: {question}\nAnswer:", "completion_field": "answer", "answers_field": "aliases",
    }  # fmt: skip
    return spec, tasks.load_user_task(spec, n_train=6, n_dev=2, n_test=n_test, seed=0)


def test_generation_em_f1_against_known_answers(model, tok):
    _, data = _gen_task()
    examples = data.train + data.test
    assert is_generation(examples) and not is_generation(_sst2(tok, 4)[0])
    preds = generate_answers(model, tok, examples, max_length=64, max_new_tokens=5, batch_size=3)
    # Half the examples accept exactly what the model says; the others only an answer it cannot produce.
    relabelled = [
        Example(e.contexts, e.continuations, 0, {**e.meta, "answers": [p] if i % 2 == 0 else ["qqqq zzzz"]})
        for i, (e, p) in enumerate(zip(examples, preds))
    ]
    rep = evaluate_examples(model, output_head(model), tok, relabelled,
                            EvalOptions(max_length=64, max_new_tokens=5, batch_size=12))  # fmt: skip
    half = sum(1 for i in range(len(examples)) if i % 2 == 0) / len(examples)
    assert rep["metric"] == "exact_match" and "accuracy" not in rep
    assert rep["n"] == len(examples)
    assert rep["exact_match"] == pytest.approx(half) and rep["f1"] == pytest.approx(half)
    assert [s["prediction"] for s in rep["samples"]] == preds[:5]


def test_generation_f1_gives_partial_credit(tok):
    ex = Example(("Q",), ("the Pacific Ocean",), 0, {"answers": ["the Pacific Ocean"]})
    from hyft.generation import generation_report

    rep = generation_report(["Pacific"], [ex])
    assert rep["exact_match"] == 0.0 and rep["f1"] == pytest.approx(2 * 1 * 0.5 / 1.5)


def test_trainer_reports_em_f1_for_generation_tasks(tmp_path, tok):
    from hyft.config import load_config
    from hyft.trainer import Trainer

    spec, _ = _gen_task()
    args = ["--method", "lora", "--data.task", "user", "--data.loss", "lm", "--data.n_train", "6", "--data.n_dev",
            "2", "--data.max_new_tokens", "4", "--data.max_length", "64", "--train.steps", "2", "--train.batch_size",
            "2", "--train.eval_every", "1", "--train.log_every", "1", "--train.progress", "false",
            "--train.output_dir", str(tmp_path / "gen")]  # fmt: skip
    cfg = load_config(None, args)
    cfg.data.dataset = spec
    info = Trainer(cfg, model=tiny_model("llama"), tokenizer=tok).fit()
    evals = json.loads((tmp_path / "gen" / "eval.json").read_text())
    assert {e["split"] for e in evals} == {"dev", "test"}
    for e in evals:
        assert e["metric"] == "exact_match" and 0 <= e["exact_match"] <= e["f1"] + 1e-9 <= 1 + 1e-9
        assert "accuracy" not in e and e["n"] == (2 if e["split"] == "dev" else 4)
    rows = [json.loads(x) for x in (tmp_path / "gen" / "metrics.jsonl").read_text().splitlines()]
    dev_rows = [r for r in rows if "eval_dev_exact_match" in r]
    assert [r["step"] for r in dev_rows] == [1] and "eval_dev_f1" in dev_rows[0]
    assert set(info["final"]) == {"dev", "test"}


# -- multi-seed summary ------------------------------------------------------------------------------------------------
def test_mean_std_is_the_sample_standard_deviation():
    xs = [0.8, 0.9, 1.0, 0.85]
    mean, std, n = mean_std(xs)
    assert n == 4 and mean == pytest.approx(statistics.mean(xs)) and std == pytest.approx(statistics.stdev(xs))
    assert mean_std([0.7]) == (0.7, None, 1)
    m, s, n = mean_std([0.5, float("nan"), None, 0.7])
    assert n == 2 and m == pytest.approx(0.6) and s == pytest.approx(math.sqrt(0.02))
    assert math.isnan(mean_std([])[0])
    assert fmt_mean_std([0.8, 0.9, 1.0]) == "0.9000 ± 0.1000"
    assert fmt_mean_std([0.8, 0.9, 1.0], digits=1, scale=100) == "90.0 ± 10.0"
    assert fmt_mean_std([0.75]) == "0.7500" and fmt_mean_std([]) == "—"
