import pytest
import torch

from conftest import byte_tokenizer, tiny_model
from hyft.config import PeftConfig
from hyft.models import attach_peft, output_head
from hyft.scoring import candidate_logits, collate, encode, loss, sequence_scores
from hyft.tasks.base import Example

EXAMPLES = [
    Example.shared_context("a great film. It was", (" terrible", " great"), 1),
    Example(("The cat sat", "The dog sat"), (" on the mat.", " on the mat."), 0),
    Example.shared_context("Is it?", (" Yes", " No", " Maybe"), 2),
]


def _naive_scores(model, tok, ex):
    """One sequence per candidate, full logits: the MeZO-style reference."""
    out = []
    for ctx, cont in zip(ex.contexts, ex.continuations):
        c = tok(ctx)["input_ids"]
        t = tok(cont, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([c + t])
        logp = model(input_ids=ids).logits.float().log_softmax(-1)[0]
        shift = logp.shape[0] - ids.shape[1]  # virtual tokens that prompt tuning prepends
        out.append(sum(logp[shift + len(c) - 1 + i, tok_id].item() for i, tok_id in enumerate(t)) / len(t))
    return out


@pytest.mark.parametrize("peft_type", ["none", "lora", "prompt", "prefix"])
def test_batched_gathered_scores_equal_naive_full_logits(peft_type):
    tok = byte_tokenizer()
    model = attach_peft(tiny_model("llama"), peft_type, PeftConfig()).eval()
    enc = [encode(tok, e, 64) for e in EXAMPLES]
    batch = collate(enc, tok.pad_token_id)
    with torch.no_grad():
        got = candidate_logits(sequence_scores(model, output_head(model), batch), batch.offsets)
        for i, ex in enumerate(EXAMPLES):
            want = torch.tensor(_naive_scores(model, tok, ex))
            torch.testing.assert_close(got[i, : ex.n_candidates], want, atol=1e-5, rtol=1e-5)
    assert got[0, 2] == float("-inf")  # padded candidate slot


def test_losses():
    tok = byte_tokenizer()
    model = tiny_model("llama").eval()
    head = output_head(model)
    enc = [encode(tok, e, 64) for e in EXAMPLES]
    with torch.no_grad():
        ce = loss(model, head, collate(enc, tok.pad_token_id), "classification")
        scores = candidate_logits(sequence_scores(model, head, collate(enc, tok.pad_token_id)), [0, 2, 4, 7])
        want = torch.nn.functional.cross_entropy(scores, torch.tensor([1, 0, 2]))
        torch.testing.assert_close(ce, want)
        lm = loss(model, head, collate(enc, tok.pad_token_id, only_label=True), "lm")
        naive = [_naive_scores(model, tok, e)[e.label] for e in EXAMPLES]
        lengths = [len(tok(e.continuations[e.label], add_special_tokens=False)["input_ids"]) for e in EXAMPLES]
        want_lm = -sum(s * n for s, n in zip(naive, lengths)) / sum(lengths)
        assert lm.item() == pytest.approx(want_lm, abs=1e-5)


def test_context_is_truncated_from_the_left():
    tok = byte_tokenizer()
    ex = Example.shared_context("x" * 100 + " end", (" yes",), 0)
    (pair,) = encode(tok, ex, 10).pairs
    assert len(pair[0]) + len(pair[1]) == 10 and tok.decode(list(pair[0])).endswith(" end")
