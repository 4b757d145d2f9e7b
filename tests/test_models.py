import pytest
import torch

from conftest import byte_tokenizer
from hyft.config import PeftConfig, load_config
from hyft.errors import ConfigError
from hyft.models import adapter_parameters, attach_peft, smollm2_gguf
from hyft.trainer import Trainer


def _tiny(kind):
    import transformers as tf

    common = dict(vocab_size=258, num_hidden_layers=2, num_attention_heads=4)
    if kind == "qwen2":
        return tf.Qwen2ForCausalLM(
            tf.Qwen2Config(hidden_size=32, intermediate_size=64, num_key_value_heads=2, **common)
        )
    if kind == "gemma":
        cfg = tf.GemmaConfig(hidden_size=32, intermediate_size=64, num_key_value_heads=2, head_dim=8, **common)
        return tf.GemmaForCausalLM(cfg)
    if kind == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=258, n_embd=32, n_layer=2, n_head=4, n_positions=128))
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["qwen2", "gemma", "gpt2"])
def test_default_lora_targets_and_a_hybrid_step_per_architecture(tmp_path, kind):
    torch.manual_seed(0)
    model = _tiny(kind)
    peft_model = attach_peft(model, "lora", PeftConfig())
    assert adapter_parameters(peft_model), "peft found LoRA targets for this architecture"
    args = [
        "--data.data_dir", "tests/fixtures/data", "--data.n_train", "16", "--data.n_dev", "0", "--data.n_test", "4",
        "--train.steps", "2", "--train.batch_size", "4", "--train.output_dir", str(tmp_path), "--train.progress",
        "false", "--train.eval_before", "false",
    ]  # fmt: skip
    info = Trainer(load_config(None, args), model=_tiny(kind), tokenizer=byte_tokenizer()).fit()
    assert info["params"]["zo_params"] > 0 and info["params"]["fo_params"] > 0


def test_lora_targets_can_be_overridden():
    from conftest import tiny_model

    model = attach_peft(tiny_model("llama"), "lora", PeftConfig(target_modules=["gate_proj"]))
    names = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert names and all("gate_proj" in n for n in names)


def test_bundled_smollm2_gguf_is_found():
    path = smollm2_gguf()
    assert path.is_file() and path.suffix == ".gguf" and path.stat().st_size > 50_000_000


def _prompt_table(model):
    return model.prompt_encoder[model.active_adapter].embedding.weight.detach()


def test_prompt_init_sample_vocab_rows_are_token_embeddings_and_random_is_peft_default():
    from conftest import tiny_model

    torch.manual_seed(0)
    model = attach_peft(tiny_model("llama"), "prompt", PeftConfig(virtual_tokens=6, prompt_init="sample_vocab"))
    vocab = model.get_input_embeddings().weight.detach()
    table = _prompt_table(model)
    for row in table:  # every virtual token is one row of the embedding table, exactly
        assert (vocab == row).all(dim=1).any()
    torch.manual_seed(0)
    rand = _prompt_table(attach_peft(tiny_model("llama"), "prompt", PeftConfig(virtual_tokens=6)))
    assert not any((vocab == row).all(dim=1).any() for row in rand)
    assert 0.5 < rand.std().item() < 2.0  # N(0, 1), peft's RANDOM


def test_prompt_init_text_uses_the_run_tokenizer_repeated_to_length():
    from conftest import tiny_model

    tok = byte_tokenizer()
    cfg = PeftConfig(virtual_tokens=7, prompt_init="text", prompt_init_text="abc")
    model = attach_peft(tiny_model("llama"), "prompt", cfg, tok)
    ids = tok("abc", add_special_tokens=False)["input_ids"]
    want = model.get_input_embeddings().weight.detach()[(ids * 3)[:7]]
    assert torch.equal(_prompt_table(model), want)
    with pytest.raises(ConfigError, match="tokenizer"):
        attach_peft(tiny_model("llama"), "prompt", cfg)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--method", "prefix", "--peft.prompt_init", "sample_vocab"], "prompt tuning only"),
        (["--method", "prompt", "--peft.prompt_init", "text"], "needs the text itself"),
        (["--method", "prompt", "--peft.prompt_init_text", "hi"], "set it to text"),
        (["--method", "prompt", "--peft.prompt_init", "vocab"], "prompt_init"),
    ],
)
def test_prompt_init_contradictions_are_config_errors(args, message):
    from hyft.validate import check_config

    with pytest.raises(ConfigError, match=message):
        check_config(load_config(None, args))


def test_a_trained_text_initialised_prompt_run_steps(tmp_path):
    from conftest import tiny_model

    args = [
        "--method", "hybrid", "--peft.type", "prompt", "--peft.virtual_tokens", "4", "--peft.prompt_init", "text",
        "--peft.prompt_init_text", "great", "--data.data_dir", "tests/fixtures/data", "--data.n_train", "16",
        "--data.n_dev", "0", "--data.n_test", "4", "--train.steps", "2", "--train.batch_size", "4",
        "--train.output_dir", str(tmp_path), "--train.progress", "false", "--train.eval_before", "false",
    ]  # fmt: skip
    info = Trainer(load_config(None, args), model=tiny_model("llama"), tokenizer=byte_tokenizer()).fit()
    assert info["params"]["fo_params"] == 4 * tiny_model("llama").config.hidden_size
