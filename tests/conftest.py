"""Tiny random models built from configs and a byte-level tokenizer built in code: no hub, fast on 2 cores."""

from __future__ import annotations

import pytest
import torch


def byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {bytes([i]).decode("latin-1"): i for i in range(256)}
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<pad>"] = len(vocab)
    vocab["<eos>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    fast.padding_side = "right"
    return fast


def tiny_model(kind: str = "llama", dtype=torch.float32, seed: int = 0, vocab: int = 258):
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    if kind == "llama":
        cfg = LlamaConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        )  # fmt: skip
        model = LlamaForCausalLM(cfg)
    elif kind == "opt":
        cfg = OPTConfig(
            vocab_size=vocab, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=256, word_embed_proj_dim=32, dropout=0.1,
        )  # fmt: skip
        model = OPTForCausalLM(cfg)
    else:
        raise ValueError(kind)
    return model.to(dtype)


def save_tiny_model(path, seed: int = 0):
    """The tiny Llama and the byte tokenizer saved like any HF model directory (what `model.name` can point at)."""
    tiny_model("llama", seed=seed).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tokenizer():
    return byte_tokenizer()
