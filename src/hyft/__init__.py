"""hyft: hybrid fine-tuning (zeroth-order base weights + first-order PEFT) for causal language models."""

__version__ = "0.1.0"
