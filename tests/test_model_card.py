"""The model card (README.md) in every export: HF-style YAML metadata with the run's settings and final metrics, the
ledger summary, and a loading snippet that works as written."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from hyft.cli import main
from hyft.model_card import HUB_IDS
from runs import make_trainer

IDS = torch.tensor([[5, 17, 99, 3, 42, 7]])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("card")
    tr = make_trainer(tmp / "run", "hybrid", 4, ["--zo.lr", "5e-2", "--fo.lr", "5e-1", "--zo.mu", "2e-3"])
    tr.fit()
    tr.model.eval()
    with torch.no_grad():
        want = tr.model(input_ids=IDS).logits
    assert main(["export", str(tmp / "run"), "--merged", str(tmp / "merged"), "--peft", str(tmp / "peft")]) == 0
    return tmp, want


def front_matter(path):
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


@pytest.mark.parametrize("kind", ["merged", "peft"])
def test_card_metadata_is_the_runs(exported, kind):
    tmp, _ = exported
    meta, body = front_matter(tmp / kind / "README.md")
    run = json.loads((tmp / "run" / "run.json").read_text())
    h = meta["hyft"]
    name = run["config"]["model"]["name"]  # the config's; these runs pass a tiny model in code
    assert meta["base_model"] == HUB_IDS.get(name, name) and f"`{name}`" in body
    assert meta["library_name"] == ("transformers" if kind == "merged" else "peft")
    assert {"hyft", "hybrid", "zeroth-order", "lora"} <= set(meta["tags"])
    assert (h["zo_lr"], h["fo_lr"], h["mu"], h["steps"]) == (5e-2, 5e-1, 2e-3, 4)
    assert h["final"] == run["final"] and set(h["final"]) == {"dev", "test"}
    ledger = json.loads(next((tmp / "run" / "checkpoints").glob("step-*/ledger.json")).read_text())
    assert f"{len(ledger['updates'])} ZO updates" in body and len(ledger["updates"]) == 4
    assert "built-in task `sst2`" in body
    assert f"| test | accuracy | {run['final']['test']:.4f} |" in body


@pytest.mark.parametrize("kind", ["merged", "peft"])
def test_card_loading_snippet_runs_as_written(exported, kind):
    tmp, want = exported
    text = (tmp / kind / "README.md").read_text(encoding="utf-8")
    code = text.split("```python\n", 1)[1].split("```", 1)[0].replace("PATH", str(tmp / kind))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    scope["model"].eval()
    with torch.no_grad():
        got = scope["model"](input_ids=IDS).logits
    assert torch.allclose(got, want, atol=1e-4)


def test_card_without_run_json_says_no_final_metrics(exported, tmp_path):
    import shutil

    tmp, _ = exported
    shutil.copytree(tmp / "run", tmp_path / "run")
    (tmp_path / "run" / "run.json").unlink()
    assert main(["export", str(tmp_path / "run"), "--merged", str(tmp_path / "m")]) == 0
    meta, body = front_matter(tmp_path / "m" / "README.md")
    assert meta["hyft"]["final"] == {} and "No final evaluation recorded" in body
