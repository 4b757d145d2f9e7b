"""Candidate scoring and the training losses built on it.

Every candidate is a (context, continuation) pair; its score is the mean log-likelihood of the continuation tokens.
The LM head runs only at the positions that predict continuation tokens: a forward pre-hook on the output head
gathers those hidden states first, so a batch never materialises batch x length x vocab logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hyft.tasks.base import Example


@dataclass
class Encoded:
    """Token ids of one example's candidates: per candidate (context ids, continuation ids)."""

    pairs: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]
    label: int
    # One-candidate SFT examples (tasks/sft.py): which continuation ids are trained on; None: all. A conversation's
    # continuation runs from its first assistant turn to the end, and the user turns between are not scored.
    scored: tuple[bool, ...] | None = None


def encode(tok, ex: Example, max_length: int) -> Encoded:
    if "segments" in ex.meta or "conversation" in ex.meta:
        from hyft.tasks.sft import encode_segments

        c_ids, t_ids, mask = encode_segments(tok, ex, max_length)
        return Encoded(((c_ids, t_ids),), 0, None if all(mask) else mask)
    pairs = []
    for ctx, cont in zip(ex.contexts, ex.continuations):
        c_ids = tok(ctx)["input_ids"]
        t_ids = tok(cont, add_special_tokens=False)["input_ids"]
        if not t_ids:
            t_ids = [tok.eos_token_id]
        t_ids = t_ids[: max_length - 1]
        # Keep the end of the context, where the question and the answer cue are.
        c_ids = c_ids[-(max_length - len(t_ids)) :]
        pairs.append((tuple(c_ids), tuple(t_ids)))
    return Encoded(tuple(pairs), ex.label)


def content_free(enc: Encoded, context_ids: Sequence[int]) -> Encoded:
    """The example with every candidate's context replaced by `context_ids` (a content-free input such as the ids of
    "N/A"). Its scores are each candidate's prior; calibration subtracts them from the real scores, i.e. divides the
    probabilities (Zhao et al. 2021, "Calibrate before use"). Continuations are kept as encoded, so candidates that
    share a continuation (WinoGrande's partial scoring) get equal priors and calibration leaves them unchanged."""
    ctx = tuple(context_ids)
    return Encoded(tuple((ctx, t) for _, t in enc.pairs), enc.label)


def calibrate(scores: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Calibrated candidate scores: log p(y | x) - log p(y | content-free), per candidate (same shapes)."""
    return scores - priors


@dataclass
class Batch:
    input_ids: torch.Tensor  # [S, L], right-padded
    attention_mask: torch.Tensor
    rows: torch.Tensor  # [T] sequence of each scored token
    cols: torch.Tensor  # [T] position whose hidden state predicts it
    targets: torch.Tensor  # [T]
    lengths: torch.Tensor  # [S] scored tokens per sequence
    offsets: list[int]  # sequence index where each example's candidates start (len = examples + 1)
    labels: torch.Tensor  # [E]

    def to(self, device) -> Batch:
        move = lambda t: t.to(device, non_blocking=True)
        return Batch(
            move(self.input_ids),
            move(self.attention_mask),
            move(self.rows),
            move(self.cols),
            move(self.targets),
            move(self.lengths),
            self.offsets,
            move(self.labels),
        )


def collate(encoded: Sequence[Encoded], pad_id: int, *, only_label: bool = False) -> Batch:
    """One padded batch of all candidates of all examples (only the correct one's when only_label)."""
    seqs, offsets, labels, masks = [], [0], [], []
    for e in encoded:
        pairs = [e.pairs[e.label]] if only_label else e.pairs
        seqs.extend(pairs)
        masks.extend([e.scored] * len(pairs))
        offsets.append(len(seqs))
        labels.append(0 if only_label else e.label)
    width = max(len(c) + len(t) for c, t in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    rows, cols, targets, lengths = [], [], [], []
    for i, ((c, t), scored) in enumerate(zip(seqs, masks)):
        full = c + t
        ids[i, : len(full)] = torch.tensor(full)
        mask[i, : len(full)] = 1
        start = len(c)
        keep = range(len(t)) if scored is None else [j for j, s in enumerate(scored) if s]
        rows += [i] * len(keep)
        cols += (start - 1 + j for j in keep)
        targets += (t[j] for j in keep)
        lengths.append(len(keep))
    as_long = lambda x: torch.tensor(x, dtype=torch.long)
    return Batch(ids, mask, as_long(rows), as_long(cols), as_long(targets), as_long(lengths), offsets, as_long(labels))


@contextlib.contextmanager
def gather_head_inputs(head: nn.Module, rows: torch.Tensor, cols: torch.Tensor, input_len: int):
    """Feed the output head only hidden[rows, cols] (shifted past any virtual tokens prepended by prompt tuning)."""

    def pre(module, args):
        hidden = args[0]
        shift = hidden.shape[1] - input_len
        return (hidden[rows, cols + shift],) + tuple(args[1:])

    handle = head.register_forward_pre_hook(pre)
    try:
        yield
    finally:
        handle.remove()


def token_logprobs(model: nn.Module, head: nn.Module, batch: Batch) -> torch.Tensor:
    """log p(target) for every scored token, [T], in fp32."""
    with gather_head_inputs(head, batch.rows, batch.cols, batch.input_ids.shape[1]):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    logits = logits.reshape(-1, logits.shape[-1]).float()
    return torch.gather(F.log_softmax(logits, dim=-1), 1, batch.targets[:, None]).squeeze(1)


def sequence_scores(model: nn.Module, head: nn.Module, batch: Batch) -> torch.Tensor:
    """Length-normalised log-likelihood of each sequence's continuation, [S]."""
    lp = token_logprobs(model, head, batch)
    sums = torch.zeros(batch.lengths.shape[0], device=lp.device, dtype=lp.dtype).index_add_(0, batch.rows, lp)
    return sums / batch.lengths


def candidate_logits(scores: torch.Tensor, offsets: list[int]) -> torch.Tensor:
    """[E, C] scores per example (padded with -inf where an example has fewer candidates)."""
    n = max(b - a for a, b in zip(offsets[:-1], offsets[1:]))
    out = scores.new_full((len(offsets) - 1, n), float("-inf"))
    for i, (a, b) in enumerate(zip(offsets[:-1], offsets[1:])):
        out[i, : b - a] = scores[a:b]
    return out


def loss(model: nn.Module, head: nn.Module, batch: Batch, kind: str) -> torch.Tensor:
    """classification: cross-entropy over candidates' scores; lm: mean NLL of the answer tokens (batch built with
    only_label=True)."""
    if kind == "lm":
        return -token_logprobs(model, head, batch).mean()
    logits = candidate_logits(sequence_scores(model, head, batch), batch.offsets)
    return F.cross_entropy(logits, batch.labels)
