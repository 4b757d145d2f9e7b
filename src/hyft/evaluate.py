"""Accuracy by candidate scoring: many examples' candidates per padded batch, no gradients."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hyft.scoring import Encoded, candidate_logits, collate, sequence_scores


def chunks_by_sequences(encoded: Sequence[Encoded], max_sequences: int) -> list[list[int]]:
    """Example indices grouped so each group has at most max_sequences candidate sequences (length-sorted to keep
    padding low)."""
    order = sorted(range(len(encoded)), key=lambda i: max(len(c) + len(t) for c, t in encoded[i].pairs))
    groups, cur, n = [], [], 0
    for i in order:
        k = len(encoded[i].pairs)
        if cur and n + k > max_sequences:
            groups.append(cur)
            cur, n = [], 0
        cur.append(i)
        n += k
    if cur:
        groups.append(cur)
    return groups


@torch.no_grad()
def predict(
    model: nn.Module, head: nn.Module, encoded: Sequence[Encoded], pad_id: int, *, max_sequences: int = 64
) -> list[int]:
    device = next(model.parameters()).device
    preds = [0] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        for group in chunks_by_sequences(encoded, max_sequences):
            batch = collate([encoded[i] for i in group], pad_id).to(device)
            logits = candidate_logits(sequence_scores(model, head, batch), batch.offsets)
            for i, p in zip(group, logits.argmax(-1).tolist()):
                preds[i] = p
    finally:
        model.train(was_training)
    return preds


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
    return {"n": n, "accuracy": acc, "per_class": dict(sorted(per_class.items()))}
