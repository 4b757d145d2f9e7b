"""Evaluation. Classification: candidate scoring, many examples' candidates per padded batch, the LM head only at the
positions that predict continuation tokens, optionally calibrated. Generation (user datasets of type generation):
greedy decoding, exact match and token F1. One entry point, `evaluate_examples`, serves the Trainer and `hyft eval`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hyft.generation import generate_answers, generation_report, is_generation
from hyft.scoring import Batch, Encoded, calibrate, collate, content_free, encode, gather_head_inputs, token_logprobs
from hyft.tasks.base import Example
from hyft.tasks.metrics import correct_string


def candidate_inputs(e: Encoded) -> list[tuple[int, ...]]:
    """Each candidate's model input: context + continuation minus its last token, which is only predicted, never
    read. Candidates that share a context and have one-token continuations (most verbalizers) share one input."""
    return [tuple(c) + tuple(t[:-1]) for c, t in e.pairs]


def chunks_by_sequences(encoded: Sequence[Encoded], max_sequences: int) -> list[list[int]]:
    """Example indices grouped so each group has at most max_sequences distinct input sequences (length-sorted to
    keep padding low)."""
    order = sorted(range(len(encoded)), key=lambda i: max(len(c) + len(t) for c, t in encoded[i].pairs))
    groups, cur, n = [], [], 0
    for i in order:
        k = len(set(candidate_inputs(encoded[i])))
        if cur and n + k > max_sequences:
            groups.append(cur)
            cur, n = [], 0
        cur.append(i)
        n += k
    if cur:
        groups.append(cur)
    return groups


def collate_distinct(encoded: Sequence[Encoded], pad_id: int) -> tuple[Batch, torch.Tensor]:
    """A right-padded batch of the distinct candidate inputs of `encoded`, plus the candidate each scored token
    belongs to. batch.rows/cols/targets address the scored tokens, batch.lengths and batch.offsets are per
    candidate. Equal inputs give equal hidden states, so sharing them changes no score."""
    index: dict[tuple[int, ...], int] = {}
    rows, cols, targets, owner, lengths, offsets, labels = [], [], [], [], [], [0], []
    for e in encoded:
        for (c, t), inp in zip(e.pairs, candidate_inputs(e)):
            k = index.setdefault(inp, len(index))
            rows += [k] * len(t)
            cols += range(len(c) - 1, len(c) - 1 + len(t))
            targets += t
            owner += [len(lengths)] * len(t)
            lengths.append(len(t))
        offsets.append(len(lengths))
        labels.append(e.label)
    seqs = list(index)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    as_long = lambda x: torch.tensor(x, dtype=torch.long)
    batch = Batch(ids, mask, as_long(rows), as_long(cols), as_long(targets), as_long(lengths), offsets, as_long(labels))
    return batch, as_long(owner)


@torch.no_grad()
def candidate_scores(
    model: nn.Module, head: nn.Module, encoded: Sequence[Encoded], pad_id: int, *, max_sequences: int = 64
) -> list[list[float]]:
    """Per example, each candidate's score: the mean log-likelihood of its continuation given its context (the
    same number scoring.sequence_scores gives in training, from fewer sequences)."""
    device = next(model.parameters()).device
    out: list[list[float]] = [[] for _ in encoded]
    was_training = model.training
    model.eval()
    try:
        for group in chunks_by_sequences(encoded, max_sequences):
            batch, owner = collate_distinct([encoded[i] for i in group], pad_id)
            batch, owner = batch.to(device), owner.to(device)
            lp = token_logprobs(model, head, batch)
            sums = torch.zeros(batch.lengths.shape[0], device=lp.device, dtype=lp.dtype).index_add_(0, owner, lp)
            scores = (sums / batch.lengths).tolist()
            for i, a, b in zip(group, batch.offsets[:-1], batch.offsets[1:]):
                out[i] = scores[a:b]
    finally:
        model.train(was_training)
    return out


def content_free_priors(
    model: nn.Module,
    head: nn.Module,
    encoded: Sequence[Encoded],
    context_ids: Sequence[int],
    pad_id: int,
    *,
    max_sequences: int = 64,
) -> list[list[float]]:
    """Per example, each candidate's score given the content-free context instead of the real one. Examples with the
    same candidates share one computation, so a task with a fixed verbalizer (SST-2, RTE, ...) costs one forward."""
    cf = [content_free(e, context_ids) for e in encoded]
    unique = list(dict.fromkeys(e.pairs for e in cf))
    scores = candidate_scores(model, head, [Encoded(p, 0) for p in unique], pad_id, max_sequences=max_sequences)
    by_pairs = dict(zip(unique, scores))
    return [by_pairs[e.pairs] for e in cf]


def argmax_predictions(scores: Sequence[Sequence[float]], priors: Sequence[Sequence[float]] | None = None) -> list[int]:
    """Index of the best candidate per example, after subtracting the priors if given (ties: the first)."""
    out = []
    for i, s in enumerate(scores):
        t = torch.tensor(s, dtype=torch.float64)
        if priors is not None:
            t = calibrate(t, torch.tensor(priors[i], dtype=torch.float64))
        out.append(int(t.argmax()))
    return out


@torch.no_grad()
def predict(
    model: nn.Module,
    head: nn.Module,
    encoded: Sequence[Encoded],
    pad_id: int,
    *,
    max_sequences: int = 64,
    priors: Sequence[Sequence[float]] | None = None,
) -> list[int]:
    """The predicted candidate of each example (calibrated when `priors` come from content_free_priors)."""
    return argmax_predictions(candidate_scores(model, head, encoded, pad_id, max_sequences=max_sequences), priors)


def accuracy_report(preds: Sequence[int], encoded: Sequence[Encoded]) -> dict:
    labels = [e.label for e in encoded]
    per_class: dict[str, dict[str, int]] = {}
    for p, y in zip(preds, labels):
        c = per_class.setdefault(str(y), {"n": 0, "correct": 0, "predicted": 0})
        c["n"] += 1
        c["correct"] += int(p == y)
    for p in preds:
        per_class.setdefault(str(p), {"n": 0, "correct": 0, "predicted": 0})["predicted"] += 1
    n = len(labels)
    acc = sum(int(p == y) for p, y in zip(preds, labels)) / n if n else float("nan")
    correct = correct_string(p == y for p, y in zip(preds, labels))
    return {"n": n, "accuracy": acc, "per_class": dict(sorted(per_class.items())), "correct": correct}


def is_lm(examples: Sequence[Example]) -> bool:
    """Language-modelling examples (an SFT dataset's `text` rows): every token is a target, nothing to choose."""
    return bool(examples) and all(ex.meta.get("lm") for ex in examples)


@torch.no_grad()
def lm_report(model: nn.Module, head: nn.Module, encoded: Sequence[Encoded], pad_id: int, *, batch_size: int = 64):
    """Teacher-forced next-token accuracy (TRL's mean_token_accuracy), loss and perplexity over the scored tokens."""
    device = next(model.parameters()).device
    nll, correct, n_tok = 0.0, 0, 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(encoded), max(1, batch_size)):
            batch = collate(encoded[start : start + batch_size], pad_id, only_label=True).to(device)
            with gather_head_inputs(head, batch.rows, batch.cols, batch.input_ids.shape[1]):
                out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
            logits = out.logits.reshape(-1, out.logits.shape[-1]).float()
            nll -= F.log_softmax(logits, dim=-1).gather(1, batch.targets[:, None]).sum().item()
            correct += int((logits.argmax(-1) == batch.targets).sum().item())
            n_tok += batch.targets.numel()
    finally:
        model.train(was_training)
    loss = nll / n_tok if n_tok else float("nan")
    return {"n": len(encoded), "metric": "token_accuracy", "token_accuracy": correct / n_tok if n_tok else float("nan"),
            "loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": n_tok}  # fmt: skip


# -- one entry point ---------------------------------------------------------------------------------------------------
@dataclass
class EvalOptions:
    max_length: int = 256
    batch_size: int = 64  # sequences per scoring batch; prompts per generation batch is a quarter of it
    calibrate: bool = False
    content_free: str = "N/A"
    max_new_tokens: int = 32
    stop: list[str] = field(default_factory=lambda: ["\n"])

    @classmethod
    def from_config(cls, cfg) -> EvalOptions:
        d = cfg.data
        return cls(d.max_length, cfg.train.eval_batch_size, d.calibrate, d.content_free, d.max_new_tokens, list(d.stop))


def evaluate_examples(
    model: nn.Module,
    head: nn.Module | None,
    tok,
    examples: Sequence[Example],
    opts: EvalOptions,
    *,
    encoded: Sequence[Encoded] | None = None,
) -> dict[str, Any]:
    """Report on one split. Classification: n, accuracy, per_class (and with calibration also
    accuracy_uncalibrated: both come from the same forwards). Generation: n, exact_match, f1, samples.
    `metric` names the headline number."""
    if is_generation(examples):
        preds = generate_answers(
            model, tok, examples, max_length=opts.max_length, max_new_tokens=opts.max_new_tokens,
            batch_size=max(1, opts.batch_size // 4), stop=opts.stop,
        )  # fmt: skip
        return generation_report(preds, examples)
    if encoded is None:
        encoded = [encode(tok, e, opts.max_length) for e in examples]
    if is_lm(examples):
        return lm_report(model, head, encoded, tok.pad_token_id, batch_size=opts.batch_size)
    scores = candidate_scores(model, head, encoded, tok.pad_token_id, max_sequences=opts.batch_size)
    raw = argmax_predictions(scores)
    if not opts.calibrate:
        return {"metric": "accuracy", **accuracy_report(raw, encoded)}
    cf_ids = tok(opts.content_free)["input_ids"]
    priors = content_free_priors(model, head, encoded, cf_ids, tok.pad_token_id, max_sequences=opts.batch_size)
    report = {"metric": "accuracy", **accuracy_report(argmax_predictions(scores, priors), encoded)}
    report["accuracy_uncalibrated"] = accuracy_report(raw, encoded)["accuracy"]
    report["calibration"] = {"content_free": opts.content_free}
    return report


# -- reading reports ---------------------------------------------------------------------------------------------------
def headline(report: dict[str, Any]) -> tuple[str, float]:
    """(name, value) of a report's main number: accuracy for classification, exact_match for generation."""
    name = report.get("metric") or ("accuracy" if "accuracy" in report else "exact_match")
    return name, float(report[name])


def summary(report: dict[str, Any]) -> str:
    """One line: 'accuracy 0.8125 (n=64)' or 'exact_match 0.4000 f1 0.5512 (n=10)'."""
    if "f1" in report:
        return f"exact_match {report['exact_match']:.4f} f1 {report['f1']:.4f} (n={report['n']})"
    if report.get("metric") == "token_accuracy":
        return f"token_accuracy {report['token_accuracy']:.4f} loss {report['loss']:.4f} (n={report['n']})"
    name, value = headline(report)
    return f"{name} {value:.4f} (n={report['n']})"


def log_fields(split: str, report: dict[str, Any]) -> dict[str, float]:
    """metrics.jsonl fields of an eval row: eval_dev_accuracy, or eval_dev_exact_match and eval_dev_f1."""
    if report.get("metric") == "token_accuracy":
        keys: tuple[str, ...] = ("token_accuracy", "loss")
    else:
        keys = ("exact_match", "f1") if "f1" in report else ("accuracy",)
    return {f"eval_{split}_{k}": report[k] for k in keys}
