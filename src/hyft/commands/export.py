"""hyft export RUN_DIR --merged OUT | --peft OUT"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run's output directory (latest checkpoint) or a checkpoint")
    p.add_argument("--merged", metavar="OUT", help="write one HF model directory with the adapter merged in")
    p.add_argument("--peft", metavar="OUT", help="write OUT/base (updated base model) and OUT/adapter (peft adapter)")
    p.add_argument(
        "--base-model",
        metavar="NAME_OR_DIR",
        help="where the frozen base tensors come from when the checkpoint does not hold the whole model "
        "(default: the run's model.name)",
    )
    p.add_argument("--device", default="cpu", help="device for merging (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output directories")


def run(args: argparse.Namespace, rest: list[str]) -> int:
    from hyft.errors import ConfigError
    from hyft.export import export

    if rest:
        raise ConfigError(f"export: unexpected arguments {' '.join(rest)}")
    report = export(
        args.run_dir, merged=args.merged, peft_out=args.peft, original=args.base_model, device=args.device,
        overwrite=args.overwrite,
    )  # fmt: skip
    print(f"[hyft] exported {report['checkpoint']}")
    if "peft" in report:
        base, adapter = report["peft"]["base"], report["peft"]["adapter"]
        print(f"  base model: {base}")
        if adapter:
            print(f"  adapter:    {adapter}")
            print(f"  lm_eval --model hf --model_args pretrained={base},peft={adapter}")
    if "merged" in report:
        print(f"  merged model: {report['merged']}  (AutoModelForCausalLM.from_pretrained)")
    return 0
