"""Where a user split's rows come from: globs of files, and the HF `datasets` library (a save_to_disk directory,
data_files, and load_dataset's hub-id path exercised offline on a local folder), with split and column mapping."""

from __future__ import annotations

import json

import datasets  # hyft[data]; scripts/setup.sh installs it, so these run in CI (no skip)
import pytest

from hyft.errors import ConfigError, DataError
from hyft.tasks import load_user_task

ALL = dict(n_train=None, n_dev=None, n_test=None, seed=0)
GEN = {"type": "generation", "prompt_field": "q", "completion_field": "a"}
ROWS = [{"q": f"question {i}", "a": f"answer {i}"} for i in range(6)]


def contexts(split) -> list[str]:
    return sorted(e.contexts[0] for e in split)


def test_glob_reads_every_matching_file_and_names_each_in_errors(tmp_path):
    for k in range(2):
        (tmp_path / f"part-{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[3 * k : 3 * k + 3]))
    data = load_user_task({**GEN, "train": str(tmp_path / "part-*.jsonl")}, **{**ALL, "n_dev": 0})
    assert contexts(data.train) == [r["q"] for r in ROWS]
    (tmp_path / "part-1.jsonl").write_text('{"q": "x"}\n')
    with pytest.raises(DataError, match=r"part-1.jsonl:1: field 'a': missing"):
        load_user_task({**GEN, "train": str(tmp_path / "part-*.jsonl")}, **ALL)
    with pytest.raises(DataError, match="the glob matches no file"):
        load_user_task({**GEN, "train": str(tmp_path / "none-*.jsonl")}, **ALL)


def test_recursive_glob(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "x.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    (tmp_path / "a" / "b" / "y.jsonl").write_text(json.dumps(ROWS[1]) + "\n")
    data = load_user_task({**GEN, "train": str(tmp_path / "a" / "**" / "*.jsonl")}, **{**ALL, "n_dev": 0})
    assert contexts(data.train) == ["question 0", "question 1"]


def test_data_files_with_format_and_tsv(tmp_path):
    (tmp_path / "rows.txt").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    spec = {**GEN, "train": {"data_files": str(tmp_path / "rows.txt"), "format": "json"}}
    assert len(load_user_task(spec, **{**ALL, "n_dev": 0}).train) == 6
    (tmp_path / "rows.tsv").write_text("q\ta\n" + "".join(f"{r['q']}\t{r['a']}\n" for r in ROWS))
    data = load_user_task({**GEN, "train": {"data_files": str(tmp_path / "rows.tsv")}}, **{**ALL, "n_dev": 0})
    assert contexts(data.train) == [r["q"] for r in ROWS]
    with pytest.raises(ConfigError, match="cannot tell the builder"):
        load_user_task({**GEN, "train": {"data_files": str(tmp_path / "rows.txt")}}, **ALL)


def test_save_to_disk_dataset_dict_with_split_and_columns(tmp_path):
    renamed = [{"question": r["q"], "answer": r["a"]} for r in ROWS]
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(renamed[:4]), "test": datasets.Dataset.from_list(renamed[4:])}
    )
    dd.save_to_disk(str(tmp_path / "saved"))
    spec = {**GEN, "train": {"hf": str(tmp_path / "saved")}, "test": {"hf": str(tmp_path / "saved"), "split": "test"},
            "columns": {"question": "q", "answer": "a"}}  # fmt: skip
    data = load_user_task(spec, **{**ALL, "n_dev": 0})
    assert contexts(data.train) == [f"question {i}" for i in range(4)]
    assert contexts(data.test) == ["question 4", "question 5"]
    assert data.reports[2].source == f"hf:{tmp_path / 'saved'}[test]"
    with pytest.raises(ConfigError, match=r"has splits \['test', 'train'\], not 'validation'"):
        load_user_task({**spec, "dev": {"hf": str(tmp_path / "saved")}}, **ALL)


def test_save_to_disk_dataset_rows_are_numbered_in_errors(tmp_path):
    datasets.Dataset.from_list([ROWS[0], {"q": "x", "a": ""}]).save_to_disk(str(tmp_path / "one"))
    with pytest.raises(DataError, match=r"hf:.*one\[train\]:2: field 'a': empty completion"):
        load_user_task({**GEN, "train": {"hf": str(tmp_path / "one")}}, **ALL)


def test_data_files_glob_through_load_dataset(tmp_path):
    for k, part in enumerate((ROWS[:3], ROWS[3:])):
        datasets.Dataset.from_list(part).to_parquet(str(tmp_path / f"p{k}.parquet"))
    data = load_user_task({**GEN, "train": {"data_files": str(tmp_path / "p*.parquet")}}, **{**ALL, "n_dev": 0})
    assert contexts(data.train) == [r["q"] for r in ROWS]


def test_hub_id_code_path_offline_on_a_local_folder(tmp_path, monkeypatch):
    # load_dataset(ID, name, split=, revision=) is the call a hub id makes; a folder of data files takes the same
    # call offline (the hub itself is unreachable here).
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    data = load_user_task({**GEN, "train": {"hf": str(tmp_path / "repo"), "split": "train"}}, **{**ALL, "n_dev": 0})
    assert contexts(data.train) == [r["q"] for r in ROWS]
    with pytest.raises(DataError, match=r"hf:no-such-user/no-such-set\[train\]: datasets could not load it"):
        load_user_task({**GEN, "train": {"hf": "no-such-user/no-such-set"}}, **ALL)


def test_sft_conversations_from_a_dataset(tmp_path):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    datasets.Dataset.from_list([{"conversations": msgs}] * 3).save_to_disk(str(tmp_path / "chat"))
    spec = {"type": "sft", "train": {"hf": str(tmp_path / "chat")}, "columns": {"conversations": "messages"}}
    data = load_user_task(spec, **{**ALL, "n_dev": 0})
    assert [e.meta["answers"] for e in data.train] == [["hello"]] * 3


@pytest.mark.parametrize(
    "source, match",
    [
        ({"hf": "x", "data_files": "y"}, "exactly one of 'hf'"),
        ({"split": "train"}, "exactly one of 'hf'"),
        ({"hf": "x", "splits": "train"}, r"unknown key\(s\) \['splits'\]"),
        (3, "must be a path, a glob or a mapping"),
    ],
)
def test_bad_source_specs(source, match):
    with pytest.raises(ConfigError, match=match):
        load_user_task({**GEN, "train": source}, **ALL)
