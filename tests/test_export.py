"""hyft export: a merged HF model directory, and base model + peft adapter, both loadable without hyft."""

import json

import pytest
import torch

from hyft.cli import main
from runs import make_trainer, save_tiny

IDS = torch.tensor([[5, 17, 99, 3, 42, 7, 120, 64], [1, 2, 3, 4, 5, 6, 7, 8]])


def logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


@pytest.fixture(scope="module")
def hybrid_run(tmp_path_factory):
    """A trained hybrid LoRA run (fp32) and the in-memory model's logits."""
    tmp = tmp_path_factory.mktemp("hybrid")
    tr = make_trainer(tmp / "run", "hybrid", 5, ["--zo.lr", "5e-2", "--fo.lr", "5e-1"])
    before = logits(tr.model)
    tr.fit()
    after = logits(tr.model)
    assert (after - before).abs().max() > 1e-3  # training moved the model: the comparisons below mean something
    return tmp, after


def test_merged_export_loads_without_hyft_with_the_same_logits(hybrid_run, capsys):
    tmp, want = hybrid_run
    out = tmp / "merged"
    assert main(["export", str(tmp / "run"), "--merged", str(out)]) == 0
    assert "merged model" in capsys.readouterr().out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    files = {p.name for p in out.iterdir()}
    assert "config.json" in files and any(f.endswith(".safetensors") for f in files)
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files) and "adapter_config.json" not in files
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert (logits(model) - want).abs().max() <= 1e-5
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok("ab")["input_ids"] and tok.pad_token is not None


def test_peft_export_loads_with_peft_with_the_same_logits(hybrid_run, capsys):
    tmp, want = hybrid_run
    out = tmp / "peft"
    assert main(["export", str(tmp / "run"), "--peft", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"pretrained={out / 'base'},peft={out / 'adapter'}" in printed
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str((out / "base").resolve())
    base = AutoModelForCausalLM.from_pretrained(str(out / "base"))
    model = PeftModel.from_pretrained(base, str(out / "adapter"))
    assert (logits(model) - want).abs().max() <= 1e-5
    auto = AutoPeftModelForCausalLM.from_pretrained(str(out / "adapter"))  # finds the base through the config
    assert (logits(auto) - want).abs().max() <= 1e-5
    assert main(["export", str(tmp / "run"), "--peft", str(out)]) == 2  # refuses to overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_export_of_a_run_with_frozen_base_uses_the_original(tmp_path):
    """method lora: the checkpoint holds no base tensors; export takes them from model.name (a local directory)."""
    original = save_tiny(tmp_path / "tiny")
    tr = make_trainer(tmp_path / "run", "lora", 4, ["--model.name", str(original), "--fo.lr", "5e-1"])
    tr.fit()
    want = logits(tr.model)
    assert main(["export", str(tmp_path / "run"), "--merged", str(tmp_path / "m")]) == 0
    from transformers import AutoModelForCausalLM

    assert (logits(AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"))) - want).abs().max() <= 1e-5


def test_prefix_export_refuses_merge_and_exports_peft(tmp_path, capsys):
    tr = make_trainer(tmp_path / "run", "hybrid", 3, ["--peft", "prefix", "--fo.lr", "1e-1"])
    tr.fit()
    assert main(["export", str(tmp_path / "run"), "--merged", str(tmp_path / "m")]) == 2
    assert "cannot be merged" in capsys.readouterr().err and not (tmp_path / "m").exists()
    assert main(["export", str(tmp_path / "run"), "--peft", str(tmp_path / "p")]) == 0
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tmp_path / "p" / "base")),
                                      str(tmp_path / "p" / "adapter"))  # fmt: skip
    assert (logits(model) - logits(tr.model)).abs().max() <= 1e-5


def test_mezo_export_is_the_updated_base(tmp_path):
    tr = make_trainer(tmp_path / "run", "mezo", 3, ["--zo.lr", "1e-2"], kind="opt")
    tr.fit()
    assert main(["export", str(tmp_path / "run"), "--merged", str(tmp_path / "m")]) == 0
    from transformers import AutoModelForCausalLM

    assert (logits(AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"))) - logits(tr.model)).abs().max() <= 1e-5
