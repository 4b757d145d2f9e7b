"""MultiRC (SuperGLUE JSONL: one line per paragraph, nesting questions and their answer options).

Each (paragraph, question, answer option) becomes one yes/no example, as in MeZO; `meta` keeps the paragraph,
question and answer ids so that per-question metrics (EM over a question's answers) can regroup them.
"""

from __future__ import annotations

from pathlib import Path

from hyft.tasks.base import Example, TaskData
from hyft.tasks.io import expect, field, row_label, text
from hyft.tasks.superglue import load_jsonl_task

# MeZO's MultiRCTemplate (from PromptSource).
TEMPLATE = '{paragraph}\nQuestion: {question}\nI found this answer "{answer}". Is that correct? Yes or No?\n'
CANDIDATES = ("No", "Yes")
LABELS = {0: 0, 1: 1}


def build(path: Path, lineno: int, row: dict) -> list[Example]:
    passage = field(path, lineno, row, "passage", dict)
    paragraph = text(path, lineno, passage, "text", where="passage.text")
    questions = field(path, lineno, passage, "questions", list, where="passage.questions")
    out = []
    for qi, q in enumerate(questions):
        qname = f"passage.questions[{qi}]"
        q = expect(path, lineno, q, dict, qname)
        question = text(path, lineno, q, "question", where=f"{qname}.question")
        answers = field(path, lineno, q, "answers", list, where=f"{qname}.answers")
        for ai, a in enumerate(answers):
            aname = f"{qname}.answers[{ai}]"
            a = expect(path, lineno, a, dict, aname)
            answer = text(path, lineno, a, "text", where=f"{aname}.text")
            label = row_label(path, lineno, a, LABELS, where=f"{aname}.label")
            context = TEMPLATE.format(paragraph=paragraph, question=question, answer=answer)
            meta = dict(line=lineno, paragraph=row.get("idx"), question=q.get("idx", qi), answer=a.get("idx", ai))
            out.append(Example.shared_context(context, CANDIDATES, label, **meta))
    return out


def load(data_dir: Path, *, n_train, n_dev, n_test, seed) -> TaskData:
    return load_jsonl_task("multirc", data_dir, build, n_train=n_train, n_dev=n_dev, n_test=n_test, seed=seed)
