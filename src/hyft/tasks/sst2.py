"""SST-2 from the GLUE TSV files (train.tsv, dev.tsv: `sentence<TAB>label`)."""

from __future__ import annotations

from pathlib import Path

from hyft.tasks.base import Example, TaskData, split_protocol
from hyft.tasks.io import label_index, read_tsv

# MeZO's template and verbalizer.
TEMPLATE = "{sentence} It was"
VERBALIZER = (" terrible", " great")


def read(path: Path) -> list[Example]:
    out = []
    for lineno, row in read_tsv(path, ("sentence", "label")):
        label = label_index(path, lineno, row["label"].strip(), {"0": 0, "1": 1})
        sentence = row["sentence"].strip()
        out.append(Example.shared_context(TEMPLATE.format(sentence=sentence), VERBALIZER, label, line=lineno))
    return out


def load(data_dir: Path, *, n_train, n_dev, n_test, seed) -> TaskData:
    train_path, eval_path = data_dir / "sst2" / "train.tsv", data_dir / "sst2" / "dev.tsv"
    train, dev, test, reports = split_protocol(
        "sst2",
        read(train_path),
        read(eval_path),
        train_source=str(train_path),
        eval_source=str(eval_path),
        n_train=n_train,
        n_dev=n_dev,
        n_test=n_test,
        seed=seed,
    )
    return TaskData("sst2", train, dev, test, reports)
