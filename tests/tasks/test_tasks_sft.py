"""TRL's SFT formats for user data: conversations rendered by the tokenizer's chat template with the loss on the
assistant turns only (checked on the token mask), conversational and plain prompt/completion, and plain text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import byte_tokenizer
from hyft import scoring
from hyft.errors import ConfigError, DataError
from hyft.tasks import load_user_task
from hyft.tasks.sft import render

ALL = dict(n_train=None, n_dev=0, n_test=None, seed=0)
# ChatML-like, with the tokenizer's <eos> ending each turn (a special token, one id).
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]


@pytest.fixture(scope="module")
def chat_tok():
    tok = byte_tokenizer()
    tok.chat_template = TEMPLATE
    return tok


def jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def scored_text(tok, ex) -> tuple[str, str]:
    """(the whole sequence, only the tokens the loss is on), decoded from the training batch itself."""
    enc = scoring.encode(tok, ex, 512)
    batch = scoring.collate([enc], tok.pad_token_id, only_label=True)
    full = tok.decode(batch.input_ids[0][batch.attention_mask[0].bool()].tolist())
    # each target is the token at the position after the one whose hidden state predicts it
    assert batch.input_ids[0, batch.cols + 1].tolist() == batch.targets.tolist()
    return full, tok.decode(batch.targets.tolist())


def load(tmp_path, rows, tok, **spec):
    data = load_user_task({"type": "sft", "train": jsonl(tmp_path / "d.jsonl", rows), **spec}, **ALL)
    return render(data, tok)


def test_messages_loss_on_assistant_turns_only(tmp_path, chat_tok):
    ex = load(tmp_path, [{"messages": CHAT}], chat_tok).train[0]
    full, scored = scored_text(chat_tok, ex)
    assert full == chat_tok.apply_chat_template(CHAT, tokenize=False)
    assert scored == "Hello!<eos>4<eos>"  # both assistant turns and their end-of-turn marker; no system/user token
    # evaluation generates the last reply from everything before it
    assert (
        ex.contexts[0]
        == "<|system|>Be brief.<eos><|user|>Hi<eos><|assistant|>Hello!<eos><|user|>2+2?<eos><|assistant|>"
    )
    assert ex.meta["answers"] == ["4"] and ex.meta["line"] == 1


def test_scored_mask_marks_exactly_the_assistant_tokens(tmp_path, chat_tok):
    ex = load(tmp_path, [{"messages": CHAT}], chat_tok).train[0]
    enc = scoring.encode(chat_tok, ex, 512)
    (ctx, cont), mask = enc.pairs[0], enc.scored
    assert chat_tok.decode(list(ctx)) == "<|system|>Be brief.<eos><|user|>Hi<eos><|assistant|>"
    off = [chat_tok.decode([t]) for t, m in zip(cont, mask) if not m]
    assert "".join(off) == "<|user|>2+2?<eos><|assistant|>"


def test_conversational_prompt_completion_scores_the_completion_only(tmp_path, chat_tok):
    shot = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]
    row = {
        "prompt": [*shot, {"role": "user", "content": "2+2?"}],
        "completion": [{"role": "assistant", "content": "4"}],
    }
    ex = load(tmp_path, [row], chat_tok).train[0]
    _, scored = scored_text(chat_tok, ex)
    assert scored == "4<eos>"  # the few-shot assistant turn in the prompt is context, not a target


def test_plain_prompt_completion_is_used_verbatim(tmp_path, chat_tok):
    ex = load(tmp_path, [{"prompt": "Q: 2+2?\nA:", "completion": " 4"}], chat_tok).train[0]
    assert (ex.contexts, ex.continuations, ex.meta["answers"]) == (("Q: 2+2?\nA:",), (" 4",), [" 4"])
    assert scored_text(chat_tok, ex) == ("Q: 2+2?\nA: 4", " 4")


def test_text_rows_are_language_modelling(tmp_path, chat_tok):
    ex = load(tmp_path, [{"text": "abcdef"}], chat_tok).train[0]
    full, scored = scored_text(chat_tok, ex)
    assert (full, scored) == ("abcdef", "bcdef")  # every token but the first, which nothing predicts
    assert ex.meta["lm"] and "answers" not in ex.meta


def test_text_with_a_bos_tokenizer_scores_every_token():
    from tokenizers import processors

    from hyft.tasks.base import Example

    tok = byte_tokenizer()  # made Llama-like: tokenizing prepends BOS (here the <eos> id, 257)
    tok.bos_token = "<eos>"
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<eos> $A", special_tokens=[("<eos>", 257)]
    )
    assert tok("abc")["input_ids"][0] == 257
    ex = Example(("",), ("abc",), 0, {"segments": [("abc", True)], "lm": True, "line": 1, "source": "x"})
    enc = scoring.encode(tok, ex, 64)
    assert enc.pairs[0] == ((257,), tuple(tok("abc", add_special_tokens=False)["input_ids"]))


def test_truncation_keeps_the_first_assistant_tokens(tmp_path, chat_tok):
    ex = load(tmp_path, [{"messages": CHAT}], chat_tok).train[0]
    enc = scoring.encode(chat_tok, ex, 20)
    (ctx, cont), mask = enc.pairs[0], enc.scored
    assert len(ctx) + len(cont) == 20 and len(cont) == 19
    assert chat_tok.decode(list(cont[:6])) == "Hello!" and mask[0]


def test_columns_rename_fields(tmp_path, chat_tok):
    rows = [{"conversations": CHAT}]
    ex = load(tmp_path, rows, chat_tok, columns={"conversations": "messages"}).train[0]
    assert scored_text(chat_tok, ex)[1] == "Hello!<eos>4<eos>"
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'convo': missing \(renamed to 'messages' by columns"):
        load(tmp_path, rows, chat_tok, columns={"convo": "messages"})


def test_chat_template_from_a_jinja_file_overrides_the_tokenizer(tmp_path):
    (tmp_path / "t.jinja").write_text(TEMPLATE.replace("<|", "[").replace("|>", "]"))
    tok = byte_tokenizer()  # no template of its own
    ex = load(tmp_path, [{"messages": CHAT}], tok, chat_template=str(tmp_path / "t.jinja"))
    assert ex.train[0].contexts[0].startswith("[system]Be brief.")


def test_chat_template_as_jinja_text(tmp_path):
    ex = load(tmp_path, [{"messages": CHAT}], byte_tokenizer(), chat_template=TEMPLATE.replace("<|", "("))
    assert ex.train[0].contexts[0].startswith("(system|>Be brief.")


# -- bad input ---------------------------------------------------------------------------------------------------------
def test_unknown_role_names_file_line_and_field(tmp_path, chat_tok):
    bad = [{"messages": CHAT}, {"messages": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}]}]
    with pytest.raises(DataError, match=r"d.jsonl:2: field 'messages\[1\].role': unknown role 'bot'; expected one of"):
        load(tmp_path, bad, chat_tok)


def test_no_assistant_turn(tmp_path, chat_tok):
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'messages': no assistant turn"):
        load(tmp_path, [{"messages": [{"role": "user", "content": "x"}]}], chat_tok)
    row = {"prompt": [{"role": "user", "content": "x"}], "completion": [{"role": "user", "content": "y"}]}
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'completion': no assistant turn"):
        load(tmp_path, [row], chat_tok)


@pytest.mark.parametrize(
    "row, match",
    [
        ({"messages": "hi"}, r"field 'messages': expected a list of \{role, content\} messages, found str \(CSV"),
        ({"messages": []}, r"field 'messages': expected a list .* found an empty list"),
        ({"messages": [{"role": "user"}]}, r"field 'messages\[0\].content': missing"),
        ({"messages": [{"role": "user", "content": 3}]}, r"field 'messages\[0\].content': expected text, found int"),
        ({"messages": [{"content": "x"}]}, r"field 'messages\[0\].role': missing"),
        ({"prompt": "x"}, r"field 'completion': missing"),
        (
            {"prompt": "x", "completion": [{"role": "assistant", "content": "y"}]},
            r"field .completion.: prompt and completion must both be text",
        ),
        ({"text": ""}, r"field 'text': empty text"),
        ({"other": 1}, r"no 'messages', 'prompt'/'completion' or 'text' field"),
    ],
)
def test_malformed_rows(tmp_path, chat_tok, row, match):
    with pytest.raises(DataError, match=r"d.jsonl:1: " + match):
        load(tmp_path, [row], chat_tok)


def test_one_format_per_file(tmp_path, chat_tok):
    with pytest.raises(DataError, match=r"d.jsonl:2: a text row in a file whose line 1 is messages"):
        load(tmp_path, [{"messages": CHAT}, {"text": "x"}], chat_tok)


def test_tokenizer_without_chat_template_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match=r"d.jsonl: conversational data .* has none .* data.dataset.chat_template"):
        load(tmp_path, [{"messages": CHAT}], byte_tokenizer())


def test_template_that_refuses_a_conversation(tmp_path):
    tok = byte_tokenizer()
    tok.chat_template = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}x"
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'messages': the chat template refused .*no system role"):
        load(tmp_path, [{"messages": CHAT}], tok)


def test_template_that_rewrites_earlier_turns(tmp_path):
    tok = byte_tokenizer()  # drops every assistant turn but the last, as reasoning templates do with their thoughts
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}{{ m['content'] }};{% endif %}"
        "{% endfor %}"
    )
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'messages\[2\]': the chat template renders turn 2"):
        load(tmp_path, [{"messages": CHAT}], tok)


def test_unrendered_conversation_cannot_be_encoded(tmp_path, chat_tok):
    data = load_user_task({"type": "sft", "train": jsonl(tmp_path / "d.jsonl", [{"messages": CHAT}])}, **ALL)
    with pytest.raises(DataError, match="conversation not rendered"):
        scoring.encode(chat_tok, data.train[0], 64)


def test_template_bos_is_not_doubled_when_the_tokenizer_adds_one(tmp_path):
    from tokenizers import processors

    tok = byte_tokenizer()  # Llama-like: prepends BOS (the <eos> id here), and the template writes one too
    tok.bos_token = "<eos>"
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<eos> $A", special_tokens=[("<eos>", 257)]
    )
    tok.chat_template = "{{ bos_token }}" + TEMPLATE
    ex = load(tmp_path, [{"messages": CHAT}], tok).train[0]
    ((ctx, _),) = scoring.encode(tok, ex, 512).pairs
    assert ctx[0] == 257 and ctx[1] != 257
    assert tok(ex.contexts[0])["input_ids"][:2] == [257, ctx[1]]  # generation's prompt: one BOS as well
