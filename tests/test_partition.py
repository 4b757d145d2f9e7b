import pytest

from conftest import tiny_model
from hyft.config import PeftConfig
from hyft.models import adapter_parameters, attach_peft, output_head
from hyft.partition import partition


def _names(model, params):
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_hybrid_partition_by_structure():
    model = attach_peft(tiny_model("llama"), "lora", PeftConfig())
    adapters = adapter_parameters(model)
    part = partition(model, adapter_params=adapters, base="zo", adapter="fo", head_modules=[output_head(model)])
    assert _names(model, part.fo) == _names(model, adapters) and all("lora_" in n for n in _names(model, part.fo))
    assert not part.frozen
    assert all(p.requires_grad for p in part.fo) and not any(p.requires_grad for p in part.zo)
    total = sum(p.numel() for p in model.parameters())
    assert part.count("fo") + part.count("zo") == total


def test_embeddings_and_head_switches_cover_tied_weights():
    model = tiny_model("llama")  # embedding and lm_head are one tensor
    part = partition(model, adapter_params=[], base="zo", head_modules=[model.lm_head], zo_head=False)
    assert "model.embed_tokens.weight" in _names(model, part.frozen)
    opt = tiny_model("opt")  # untied head, plus learned positions (an nn.Embedding subclass)
    part = partition(opt, adapter_params=[], base="zo", head_modules=[opt.lm_head], zo_embeddings=False)
    frozen = _names(opt, part.frozen)
    assert {"model.decoder.embed_tokens.weight", "model.decoder.embed_positions.weight"} <= frozen
    assert "lm_head.weight" not in frozen  # OPT ties lm_head to embed_tokens by default: one tensor, first name


def test_include_exclude_patterns_narrow_the_zo_group_only():
    model = tiny_model("llama")
    part = partition(model, adapter_params=[], base="zo", include=["*.mlp.*"], exclude=["*layers.1.*"])
    zo = _names(model, part.zo)
    assert zo and all(".mlp." in n and "layers.0" in n for n in zo)
    part = partition(model, adapter_params=[], base="fo", include=["nothing"])
    assert not part.frozen  # patterns only apply to ZO


def test_rejects_unknown_treatment():
    with pytest.raises(ValueError):
        partition(tiny_model("llama"), adapter_params=[], base="sgd")
