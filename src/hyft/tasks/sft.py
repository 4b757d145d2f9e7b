"""TRL's SFT dataset formats for user data (`dataset: {type: sft}`), one of these per row:

    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}   conversational
    {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello!"}]}
    {"prompt": "Q: 2+2?\\nA:", "completion": " 4"}                                       prompt/completion (plain)
    {"text": "Any text to model."}                                                             language modelling

Conversations are rendered with the tokenizer's own chat template, so reading them needs the tokenizer: the loader
checks their structure (file, line, field) and `render` turns them into token segments once the tokenizer is known.
The loss is on the assistant turns only (conversational: every assistant turn; prompt/completion: the completion's),
including the template's end-of-turn marker after each, so the model learns where a reply stops.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from hyft.errors import ConfigError, DataError
from hyft.tasks.base import Example, TaskData
from hyft.tasks.io import data_error

ROLES = ("system", "user", "assistant", "tool")
KINDS = ("messages", "prompt_completion", "text")
PENDING = "pending"  # meta["chat"] of a conversation not yet rendered with a tokenizer


def row_kind(row: dict[str, Any]) -> str | None:
    if "messages" in row:
        return "messages"
    if "prompt" in row or "completion" in row:
        return "prompt_completion"
    if "text" in row:
        return "text"
    return None


def check_messages(path: str | Path, line: int, value: Any, name: str) -> list[dict[str, Any]]:
    """A list of {role, content} mappings, each role one of ROLES and each content a string."""
    if not isinstance(value, list) or not value:
        found = "an empty list" if value == [] else type(value).__name__
        hint = (
            " (CSV and TSV cells are text: write conversations as JSONL or parquet)" if isinstance(value, str) else ""
        )
        raise data_error(path, f"expected a list of {{role, content}} messages, found {found}{hint}", line=line,
                         field=name)  # fmt: skip
    out = []
    for i, m in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(m, dict):
            raise data_error(path, f"expected a {{role, content}} mapping, found {type(m).__name__}", line=line,
                             field=where)  # fmt: skip
        role = m.get("role")
        if role not in ROLES:
            what = "missing" if "role" not in m else f"unknown role {role!r:.40}"
            raise data_error(path, f"{what}; expected one of {list(ROLES)}", line=line, field=f"{where}.role")
        if not isinstance(m.get("content"), str):
            found = "missing" if "content" not in m else f"expected text, found {type(m['content']).__name__}"
            raise data_error(path, found, line=line, field=f"{where}.content")
        out.append(dict(m))
    return out


def _last_assistant(msgs: list[dict[str, Any]], start: int) -> int | None:
    hits = [i for i in range(start, len(msgs)) if msgs[i]["role"] == "assistant"]
    return hits[-1] if hits else None


def sft_builder(spec: dict, chat_template: str | None):
    kinds: dict[str, tuple[str, int]] = {}  # file -> (kind, first line); one format per file, as in TRL

    def build(path: Path, line: int, row: dict[str, Any]) -> Example:
        kind = row_kind(row)
        if kind is None:
            raise data_error(path, "no 'messages', 'prompt'/'completion' or 'text' field (rename columns with "
                             "`columns:`)", line=line)  # fmt: skip
        first = kinds.setdefault(str(path), (kind, line))
        if first[0] != kind:
            msg = f"a {kind} row in a file whose line {first[1]} is {first[0]}; use one format per file"
            raise data_error(path, msg, line=line)
        meta = dict(line=line, source=str(path))
        if kind == "text":
            text = row["text"]
            if not isinstance(text, str) or not text.strip():
                found = "empty text" if isinstance(text, str) else f"expected text, found {type(text).__name__}"
                raise data_error(path, found, line=line, field="text")
            return Example(("",), (text,), 0, {**meta, "segments": [(text, True)], "lm": True})
        if kind == "messages":
            msgs, scored_from = check_messages(path, line, row["messages"], "messages"), 0
        else:
            for key in ("prompt", "completion"):
                if key not in row:
                    raise data_error(path, "missing (a prompt/completion row needs both)", line=line, field=key)
            prompt, completion = row["prompt"], row["completion"]
            if isinstance(prompt, str) and isinstance(completion, str):
                if not completion:
                    raise data_error(path, "empty completion; nothing to train on", line=line, field="completion")
                return Example((prompt,), (completion,), 0, {**meta, "answers": [completion]})
            if isinstance(prompt, str) != isinstance(completion, str):
                raise data_error(path, "prompt and completion must both be text or both be message lists",
                                 line=line, field="completion")  # fmt: skip
            prompt = check_messages(path, line, prompt, "prompt")
            msgs = prompt + check_messages(path, line, completion, "completion")
            scored_from = len(prompt)
        last = _last_assistant(msgs, scored_from)
        if last is None:
            where = "messages" if kind == "messages" else "completion"
            raise data_error(path, "no assistant turn; the loss is on assistant turns, so there is nothing to train "
                             "on", line=line, field=where)  # fmt: skip
        chat = dict(messages=msgs, scored_from=scored_from, template=chat_template)
        return Example(("",), (msgs[last]["content"],), 0, {**meta, "chat": PENDING, "conversation": chat,
                                                             "answers": [msgs[last]["content"].strip()]})  # fmt: skip

    return build


# -- rendering with the tokenizer --------------------------------------------------------------------------------------
def needs_rendering(data: TaskData) -> bool:
    return any(e.meta.get("chat") == PENDING for s in ("train", "dev", "test") for e in data.split(s))


def adds_bos(tok) -> bool:
    """Whether tokenizing text prepends the BOS token (Llama-style tokenizers; GPT-2 style ones do not)."""
    bos = getattr(tok, "bos_token_id", None)
    ids = tok("a")["input_ids"]
    return bos is not None and bool(ids) and ids[0] == bos


def _template_of(tok, override: str | None, source: str) -> str:
    if override:
        return override
    if getattr(tok, "chat_template", None):
        return tok.chat_template
    name = getattr(tok, "name_or_path", "") or type(tok).__name__
    raise ConfigError(
        f"{source}: conversational data is rendered with the tokenizer's chat template, and the tokenizer of "
        f"{name!r} has none (a base model). Use an instruct/chat model, give one as data.dataset.chat_template "
        "(a Jinja string or a .jinja file), or write the rows as prompt/completion text"
    )


def _apply(tok, template: str, msgs, gen: bool, path: str, line: int) -> str:
    try:
        return tok.apply_chat_template(msgs, chat_template=template, tokenize=False, add_generation_prompt=gen)
    except Exception as e:  # jinja's TemplateError (raise_exception in the template) and friends
        detail = " ".join(str(e).split())[:120]
        raise data_error(path, f"the chat template refused this conversation ({detail})", line=line,
                         field="messages") from None  # fmt: skip


def render_example(tok, ex: Example) -> Example:
    """The conversation as text segments (text, scored): the template's rendering of the whole conversation cut at
    each scored assistant turn. A turn's span is found by rendering the conversation up to it with and without the
    generation prompt, which needs a template that renders earlier turns the same whatever follows them."""
    conv, path, line = ex.meta["conversation"], ex.meta["source"], ex.meta["line"]
    msgs, template = conv["messages"], _template_of(tok, conv["template"], path)
    full = _apply(tok, template, msgs, False, path, line)
    segments, pos, prompt = [], 0, ""
    for i in range(conv["scored_from"], len(msgs)):
        if msgs[i]["role"] != "assistant":
            continue
        before = _apply(tok, template, msgs[:i], True, path, line)
        upto = _apply(tok, template, msgs[: i + 1], False, path, line)
        if not (full.startswith(upto) and upto.startswith(before) and len(before) >= pos):
            raise data_error(path, f"the chat template renders turn {i} differently depending on what follows it, "
                             "so its tokens cannot be located; write this row as prompt/completion",
                             line=line, field=f"messages[{i}]")  # fmt: skip
        segments += [(full[pos : len(before)], False), (full[len(before) : len(upto)], True)]
        pos, prompt = len(upto), before
    if pos < len(full):
        segments.append((full[pos:], False))
    bos = getattr(tok, "bos_token", None)
    if bos and adds_bos(tok):  # the tokenizer adds BOS itself; the template's copy would make two
        segments = [(t[len(bos) :], s) if k == 0 and t.startswith(bos) else (t, s) for k, (t, s) in enumerate(segments)]
        prompt = prompt[len(bos) :] if prompt.startswith(bos) else prompt
    segments = [(t, s) for t, s in segments if t]
    meta = {k: v for k, v in ex.meta.items() if k not in ("chat", "conversation")}
    last = next(t for t, s in reversed(segments) if s)
    return Example((prompt,), (last,), 0, {**meta, "chat": "rendered", "segments": segments})


def render(data: TaskData, tok) -> TaskData:
    """`data` with every pending conversation rendered by `tok`'s chat template (unchanged when there is none)."""
    if not needs_rendering(data):
        return data
    do = lambda exs: [render_example(tok, e) if e.meta.get("chat") == PENDING else e for e in exs]
    return replace(data, train=do(data.train), dev=do(data.dev), test=do(data.test))


def encode_segments(tok, ex: Example, max_length: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[bool, ...]]:
    """(context ids, continuation ids, which continuation ids are scored): the context is everything before the
    first scored token; the continuation keeps its start and the context its end when they do not fit."""
    if ex.meta.get("chat") == PENDING:
        raise DataError(ex.meta["source"], "conversation not rendered: call hyft.tasks.sft.render(data, tokenizer) "
                        "first", line=ex.meta["line"])  # fmt: skip
    prefix = [tok.bos_token_id] if adds_bos(tok) else []
    ids, mask = list(prefix), [False] * len(prefix)
    for text, scored in ex.meta["segments"]:
        t = tok(text, add_special_tokens=False)["input_ids"]
        ids += t
        mask += [scored] * len(t)
    first = mask.index(True) if True in mask else len(ids)
    first = max(first, 1)  # the first token of a text has nothing before it to be predicted from
    c_ids, t_ids, t_mask = ids[:first], ids[first:], mask[first:]
    if not any(t_mask):
        raise data_error(ex.meta["source"], "nothing to train on after tokenizing (the text is one token)",
                         line=ex.meta["line"])  # fmt: skip
    t_ids, t_mask = t_ids[: max_length - 1], t_mask[: max_length - 1]
    c_ids = c_ids[-(max_length - len(t_ids)) :]
    return tuple(c_ids), tuple(t_ids), tuple(t_mask)
