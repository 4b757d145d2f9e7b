"""Greedy generation for generation tasks (user datasets of type generation): left-padded batches through
`model.generate`, predictions cut at the first stop string, scored by SQuAD exact match and token F1 against
`meta["answers"]`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hyft.tasks.base import Example
from hyft.tasks.metrics import correct_string, exact_match, token_f1


def is_generation(examples: Sequence[Example]) -> bool:
    """Generation examples have one candidate (prompt, completion) and the acceptable answers in meta."""
    return bool(examples) and all(ex.n_candidates == 1 and "answers" in ex.meta for ex in examples)


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, W] ids and attention mask, padded on the left so every prompt ends at the last column (where decoding
    continues)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def prompt_ids(tok, examples: Sequence[Example], max_length: int, max_new_tokens: int) -> list[list[int]]:
    """Each example's context tokens, keeping the end (like scoring.encode) so prompt + answer fit max_length."""
    keep = max(1, max_length - max_new_tokens)
    return [tok(ex.contexts[0])["input_ids"][-keep:] for ex in examples]


@torch.no_grad()
def greedy_generate(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    pad_id: int,
    eos_id: int | None,
    max_new_tokens: int,
    batch_size: int = 16,
) -> list[list[int]]:
    """Greedy continuations (new tokens only, cut before the first EOS) of each prompt. Prompts are batched by
    length (less padding) and left-padded; the result is in the input order."""
    from transformers import GenerationConfig

    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    gen = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad_id, eos_token_id=eos_id
    )
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            group = order[start : start + batch_size]
            ids, mask = left_pad([prompts[i] for i in group], pad_id)
            seqs = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen)
            new = seqs[:, ids.shape[1] :].tolist()
            for i, toks in zip(group, new):
                if eos_id is not None and eos_id in toks:
                    toks = toks[: toks.index(eos_id)]
                out[i] = toks
    finally:
        model.train(was_training)
    return out


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text up to the first occurrence of any stop string (empty stop strings are ignored)."""
    cuts = [text.find(s) for s in stop if s]
    cuts = [c for c in cuts if c >= 0]
    return text[: min(cuts)] if cuts else text


def generate_answers(
    model: nn.Module,
    tok,
    examples: Sequence[Example],
    *,
    max_length: int = 256,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    stop: Sequence[str] = ("\n",),
) -> list[str]:
    """The model's greedy answer to each example's prompt, decoded without special tokens and cut at `stop`."""
    prompts = prompt_ids(tok, examples, max_length, max_new_tokens)
    new = greedy_generate(
        model, prompts, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )  # fmt: skip
    return [cut_at_stop(tok.decode(t, skip_special_tokens=True), stop).strip() for t in new]


def generation_report(preds: Sequence[str], examples: Sequence[Example], *, samples: int = 5) -> dict:
    """Mean exact match and token F1 over examples (each against its best answer), plus a few predictions."""
    em = [exact_match(p, ex.meta["answers"]) for p, ex in zip(preds, examples)]
    f1 = [token_f1(p, ex.meta["answers"]) for p, ex in zip(preds, examples)]
    n = len(em)
    return {
        "n": n,
        "metric": "exact_match",
        "exact_match": sum(em) / n if n else float("nan"),
        "f1": sum(f1) / n if n else float("nan"),
        "correct": correct_string(e >= 1.0 for e in em),
        "samples": [
            {"prompt": ex.contexts[0][-200:], "prediction": p, "answers": list(ex.meta["answers"])}
            for p, ex in list(zip(preds, examples))[:samples]
        ],
    }
