"""Smoke tests on the real benchmark files (shared/data), checked against the counts in its README.

They read whole files with every split unsampled (n=None), so rows_available and the label counts can be compared
with the README's tables; a label count that matched under the wrong mapping would have to swap exactly.
"""

from __future__ import annotations

from collections import Counter

import pytest

from hyft.tasks import load_task, resolve_data_dir

DATA = resolve_data_dir(None)
pytestmark = pytest.mark.skipif(not (DATA / "README.md").is_file(), reason=f"no real data at {DATA}")

ALL = dict(n_train=None, n_dev=0, n_test=None, seed=0)


def _labels(examples):
    return dict(Counter(e.label for e in examples))


# task: (train file, rows, train label counts), (test file, rows, test label counts); None where the README
# gives no per-label count for that file or the examples are not one per row.
CASES = {
    "sst2": (("sst2/train.tsv", 67349, {0: 29780, 1: 37569}), ("sst2/dev.tsv", 872, {0: 428, 1: 444})),
    "wsc": (("wsc/train.jsonl", 554, {0: 295, 1: 259}), ("wsc/val.jsonl", 104, {0: 66, 1: 38})),
    "rte": (("rte/train.jsonl", 2490, {0: 1249, 1: 1241}), ("rte/val.jsonl", 277, {0: 146, 1: 131})),
    "cb": (("cb/train.jsonl", 250, {0: 115, 1: 119, 2: 16}), ("cb/val.jsonl", 56, {0: 23, 1: 28, 2: 5})),
    "copa": (("copa/train.jsonl", 400, {0: 195, 1: 205}), ("copa/val.jsonl", 100, {0: 55, 1: 45})),
    "boolq": (("boolq/fewglue32/train.jsonl", 32, {0: 18, 1: 14}), ("boolq/val.jsonl", 3270, {0: 2033, 1: 1237})),
    "wic": (("wic/fewglue32/train.jsonl", 32, {1: 17, 0: 15}), ("wic/val.jsonl", 638, {0: 319, 1: 319})),
    # MultiRC: one example per answer option
    "multirc": (
        ("multirc/fewglue32/train.jsonl", 154, {0: 86, 1: 68}),
        ("multirc/val.jsonl", 4848, {0: 2773, 1: 2075}),
    ),
    "winogrande": (
        ("winogrande/train_l.jsonl", 10234, {0: 5117, 1: 5117}),
        ("winogrande/dev.jsonl", 1267, {0: 628, 1: 639}),
    ),
}


@pytest.mark.parametrize("task", sorted(CASES))
def test_real_files_match_readme(task):
    (train_file, n_train, train_labels), (test_file, n_test, test_labels) = CASES[task]
    data = load_task(task, None, **ALL)
    train, _, test = data.reports
    assert (train.source, train.rows_available, train.rows_used) == (str(DATA / train_file), n_train, n_train)
    assert (test.source, test.rows_available, test.rows_used) == (str(DATA / test_file), n_test, n_test)
    assert _labels(data.train) == train_labels
    assert _labels(data.test) == test_labels


@pytest.mark.parametrize("task,dev_file,rows", [("boolq", 32, {0: 19, 1: 13}), ("wic", 32, {0: 16, 1: 16})])
def test_real_fewglue_dev32(task, dev_file, rows):
    data = load_task(task, None, n_train=None, n_dev=None, n_test=0)
    assert data.reports[1].source == str(DATA / task / "fewglue32/dev32.jsonl")
    assert (data.reports[1].rows_available, _labels(data.dev)) == (dev_file, rows)


@pytest.mark.parametrize("size,rows", [("xs", 160), ("s", 640), ("m", 2558)])
def test_real_winogrande_sizes(size, rows):
    data = load_task("winogrande", None, size=size, **ALL)
    assert data.reports[0].rows_available == rows
    assert _labels(data.train) == {0: rows // 2, 1: rows // 2}


def test_real_default_protocol():
    data = load_task("rte", None)  # 1000 train, 100 dev, up to 1000 test
    assert [r.rows_used for r in data.reports] == [1000, 100, 277]
    data = load_task("copa", None)
    assert [r.rows_used for r in data.reports] == [300, 100, 100]
