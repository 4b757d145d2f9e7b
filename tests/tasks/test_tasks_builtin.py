"""Built-in task readers on small hand-written fixtures in the original formats."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hyft.errors import ConfigError, DataError
from hyft.tasks import TASKS, boolq, cb, copa, load_task, multirc, rte, sst2, wic, winogrande, wsc
from hyft.tasks.superglue import read_examples

FIX = Path(__file__).parent / "fixtures"


def test_registry_names():
    assert sorted(TASKS) == ["boolq", "cb", "copa", "multirc", "rte", "sst2", "wic", "winogrande", "wsc"]


def test_sst2_template_and_verbalizer():
    ex = sst2.read(FIX / "sst2/train.tsv")
    assert len(ex) == 8
    assert ex[0].contexts == ("a warm , funny and quietly moving film It was",) * 2
    assert ex[0].continuations == (" terrible", " great")
    assert [e.label for e in ex] == [1, 0, 1, 0, 1, 0, 1, 0]


def test_rte_template():
    ex = read_examples(FIX / "rte/train.jsonl", rte.build)
    assert ex[0].contexts[0] == (
        'The museum opened in 1902 and has been free ever since.\nDoes this mean that "The museum charges admission."'
        " is true? Yes or No?\n"
    )
    assert ex[0].continuations == ("Yes", "No")
    assert [e.label for e in ex] == [1, 0, 0, 1, 0, 1, 0, 1]  # entailment -> "Yes"


def test_cb_template():
    ex = read_examples(FIX / "cb/train.jsonl", cb.build)
    assert ex[2].contexts[0] == (
        "Suppose I'm not sure whether the meeting moved to Friday. "
        'Can we infer that "the meeting moved to Friday"? Yes, No, or Maybe?\n'
    )
    assert ex[2].continuations == ("Yes", "No", "Maybe")
    assert [e.label for e in ex] == [0, 1, 2, 0, 1, 2, 0, 1]  # entailment, contradiction, neutral


def test_boolq_template_capitalises_and_adds_question_mark():
    ex = read_examples(FIX / "boolq/fewglue32/train.jsonl", boolq.build)
    assert ex[0].contexts[0] == (
        "Mount Kosciuszko -- Mount Kosciuszko is the highest mountain in mainland Australia. "
        "Is mount kosciuszko the highest mountain in australia?\n"
    )
    assert ex[2].contexts[0].endswith(" Can penguins fly?\n")  # already had its "?"
    assert ex[0].continuations == ("Yes", "No")
    assert [e.label for e in ex] == [0, 0, 1, 1, 0, 1]  # true -> "Yes"


def test_wic_template():
    ex = read_examples(FIX / "wic/fewglue32/train.jsonl", wic.build)
    assert ex[0].contexts[0] == (
        'Does the word "bank" have the same meaning in these two sentences? Yes, No?\n'
        "She sat on the bank of the river.\nHe deposited cash at the bank.\n"
    )
    assert ex[0].continuations == ("No", "Yes")
    assert [e.label for e in ex] == [0, 1, 0, 1, 0, 1]


def test_wsc_template_lowercases_pronoun():
    ex = read_examples(FIX / "wsc/train.jsonl", wsc.build)
    assert ex[4].contexts[0] == (
        "Sam called Max, but He did not answer the phone.\n"
        'In the previous sentence, does the pronoun "he" refer to Max? Yes or No?\n'
    )
    assert ex[4].continuations == ("No", "Yes")
    assert [e.label for e in ex] == [1, 0] * 4


def test_copa_connective_and_lowercased_choices():
    ex = read_examples(FIX / "copa/train.jsonl", copa.build)
    assert ex[0].contexts == ("The man turned on the faucet so",) * 2
    assert ex[0].continuations == (" the toilet filled with water.", " water flowed from the spout.")
    assert ex[0].label == 1
    assert ex[1].contexts[0] == "My body cast a shadow over the lawn because"
    assert ex[2].continuations == (" I ate a sandwich.", " I went for a run.")  # "I" keeps its capital
    assert ex[4].contexts[0] == "The window broke because"  # no final period to drop
    assert ex[4].continuations == (" a ball hit it.", " it was cleaned.")


def test_multirc_one_example_per_answer_option():
    ex = read_examples(FIX / "multirc/fewglue32/train.jsonl", multirc.build)
    assert len(ex) == 8
    assert ex[0].contexts[0] == (
        "Lena grew tomatoes and beans. The beans failed in the dry summer.\nQuestion: What did Lena grow?\n"
        'I found this answer "Tomatoes and beans". Is that correct? Yes or No?\n'
    )
    assert ex[0].continuations == ("No", "Yes")
    assert [e.label for e in ex] == [1, 0, 1, 1, 0, 1, 0, 0]
    assert [(e.meta["paragraph"], e.meta["question"]) for e in ex[:6]] == [(0, 0)] * 3 + [(0, 1)] * 2 + [(1, 0)]


def test_winogrande_partial_scoring_splits_at_the_blank():
    ex = winogrande.read(FIX / "winogrande/train_l.jsonl")
    assert ex[0].contexts == (
        "Kate lent her umbrella to Jill because Kate",
        "Kate lent her umbrella to Jill because Jill",
    )
    assert ex[0].continuations == (" was going out in the rain.",) * 2
    assert ex[0].label == 1
    rows = [json.loads(line) for line in (FIX / "winogrande/train_l.jsonl").read_text().splitlines()]
    for e, row in zip(ex, rows):
        for context, option in zip(e.contexts, (row["option1"], row["option2"])):
            assert context.endswith(option)
            assert context[: -len(option)] + "_" + e.continuations[0] == row["sentence"]
        assert e.label == int(row["answer"]) - 1


@pytest.fixture
def wg_dir(tmp_path):
    shutil.copytree(FIX / "winogrande", tmp_path / "winogrande")
    return tmp_path / "winogrande"


def _rewrite(path: Path, edit):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(edit(dict(r))) + "\n" for r in rows))


def test_winogrande_labels_from_lst_when_answer_is_absent(wg_dir):
    _rewrite(wg_dir / "dev.jsonl", lambda r: {k: v for k, v in r.items() if k != "answer"})
    assert [e.label for e in winogrande.read(wg_dir / "dev.jsonl")] == [1, 0, 1]


def test_winogrande_answer_and_labels_file_must_agree(wg_dir):
    (wg_dir / "dev-labels.lst").write_text("2\n2\n2\n")
    with pytest.raises(DataError, match=r"dev-labels.lst:2: field 'label': '2' disagrees with answer '1'"):
        winogrande.read(wg_dir / "dev.jsonl")


def test_winogrande_labels_file_length_must_match(wg_dir):
    (wg_dir / "dev-labels.lst").write_text("2\n1\n")
    with pytest.raises(DataError, match="has 2 labels but dev.jsonl has 3 rows"):
        winogrande.read(wg_dir / "dev.jsonl")


def test_winogrande_without_any_label(wg_dir):
    (wg_dir / "dev-labels.lst").unlink()
    _rewrite(wg_dir / "dev.jsonl", lambda r: {**r, "answer": ""})
    with pytest.raises(DataError, match=r"dev.jsonl:1: field 'answer': missing, and there is no dev-labels.lst"):
        winogrande.read(wg_dir / "dev.jsonl")


def test_winogrande_needs_exactly_one_blank(wg_dir):
    _rewrite(wg_dir / "dev.jsonl", lambda r: {**r, "sentence": r["sentence"].replace("_", "the")})
    with pytest.raises(DataError, match=r"dev.jsonl:1: field 'sentence': expected one '_' blank, found 0"):
        winogrande.read(wg_dir / "dev.jsonl")


def test_winogrande_size_option():
    data = load_task("winogrande", FIX, size="xs", n_train=None, n_dev=0, n_test=None)
    assert data.reports[0].source.endswith("train_xs.jsonl") and data.reports[0].rows_available == 4
    assert load_task("winogrande", FIX, n_dev=0).reports[0].source.endswith("train_l.jsonl")
    with pytest.raises(ConfigError, match="size must be one of"):
        load_task("winogrande", FIX, size="huge")
    with pytest.raises(ConfigError, match="has no option"):
        load_task("rte", FIX, size="xs")


@pytest.mark.parametrize(
    "task,train,dev,test",
    [
        ("sst2", ("sst2/train.tsv", 8, 4), ("sst2/train.tsv", 8, 2), ("sst2/dev.tsv", 3, 2)),
        ("rte", ("rte/train.jsonl", 8, 4), ("rte/train.jsonl", 8, 2), ("rte/val.jsonl", 3, 2)),
        ("cb", ("cb/train.jsonl", 8, 4), ("cb/train.jsonl", 8, 2), ("cb/val.jsonl", 3, 2)),
        ("wsc", ("wsc/train.jsonl", 8, 4), ("wsc/train.jsonl", 8, 2), ("wsc/val.jsonl", 3, 2)),
        ("copa", ("copa/train.jsonl", 8, 4), ("copa/train.jsonl", 8, 2), ("copa/val.jsonl", 3, 2)),
        (
            "winogrande",
            ("winogrande/train_l.jsonl", 10, 4),
            ("winogrande/train_l.jsonl", 10, 2),
            ("winogrande/dev.jsonl", 3, 2),
        ),
        # Only FewGLUE's files: train from fewglue32/train.jsonl, dev from dev32.jsonl.
        (
            "boolq",
            ("boolq/fewglue32/train.jsonl", 6, 4),
            ("boolq/fewglue32/dev32.jsonl", 3, 2),
            ("boolq/val.jsonl", 3, 2),
        ),
        ("wic", ("wic/fewglue32/train.jsonl", 6, 4), ("wic/fewglue32/dev32.jsonl", 3, 2), ("wic/val.jsonl", 3, 2)),
        (
            "multirc",
            ("multirc/fewglue32/train.jsonl", 8, 4),
            ("multirc/fewglue32/dev32.jsonl", 2, 2),
            ("multirc/val.jsonl", 3, 2),
        ),
    ],
)
def test_reports(task, train, dev, test):
    data = load_task(task, FIX, n_train=4, n_dev=2, n_test=2, seed=0)
    assert data.name == task
    got = [(r.split, Path(r.source).relative_to(FIX).as_posix(), r.rows_available, r.rows_used) for r in data.reports]
    assert got == [("train", *train), ("dev", *dev), ("test", *test)]
    assert (len(data.train), len(data.dev), len(data.test)) == (train[2], dev[2], test[2])


def _keys(examples):
    return [(e.meta["line"], e.meta.get("answer")) for e in examples]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_sampling_is_seeded_and_disjoint(task):
    a = load_task(task, FIX, n_train=3, n_dev=2, n_test=2, seed=7)
    b = load_task(task, FIX, n_train=3, n_dev=2, n_test=2, seed=7)
    assert a.train == b.train and a.dev == b.dev and a.test == b.test
    if a.reports[1].source == a.reports[0].source:  # dev drawn from the training file
        assert not set(_keys(a.train)) & set(_keys(a.dev))
    for e in a.train + a.dev + a.test:
        assert len(e.contexts) == len(e.continuations) == e.n_candidates and 0 <= e.label < e.n_candidates


def test_different_seeds_give_different_samples():
    orders = {tuple(_keys(load_task("rte", FIX, n_train=8, n_dev=0, seed=s).train)) for s in range(5)}
    assert len(orders) > 1


def test_small_training_file_keeps_dev_size():
    # MeZO: a file smaller than n_train + n_dev gives dev its full size and train the rest
    data = load_task("cb", FIX, n_train=1000, n_dev=3, n_test=None)
    assert (len(data.train), len(data.dev), len(data.test)) == (5, 3, 3)
    data = load_task("cb", FIX, n_train=1000, n_dev=None)
    assert (len(data.train), len(data.dev)) == (8, 0)


def test_full_training_file_is_preferred_over_fewglue(tmp_path):
    shutil.copytree(FIX / "boolq", tmp_path / "boolq")
    shutil.copy(FIX / "boolq/fewglue32/train.jsonl", tmp_path / "boolq/train.jsonl")
    data = load_task("boolq", tmp_path, n_train=3, n_dev=2)
    assert [Path(r.source).relative_to(tmp_path).as_posix() for r in data.reports] == [
        "boolq/train.jsonl",
        "boolq/train.jsonl",
        "boolq/val.jsonl",
    ]


def test_missing_data_directory_says_how_to_point_at_it(tmp_path):
    with pytest.raises(DataError, match=r"rte/train.jsonl: file not found .*HYFT_DATA_DIR"):
        load_task("rte", tmp_path / "nowhere")


def test_unknown_task_and_bad_sizes():
    with pytest.raises(ConfigError, match="unknown task 'squad'"):
        load_task("squad", FIX)
    with pytest.raises(ConfigError, match="n_train must be a non-negative integer"):
        load_task("rte", FIX, n_train=-1)
