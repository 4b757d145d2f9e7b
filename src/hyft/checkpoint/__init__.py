"""Checkpoints: everything a bit-exact resume and an export need, in safetensors + JSON (no pickle), written atomically.

One module per layer, each only looking down:

    format.py   the directory format: where checkpoints are, atomic writing, the COMPLETE marker (sizes + sha256)
    weights.py  tensors: checked safetensors, nested state as JSON + safetensors, HF names and sharded layout, peft
    ledger.py   the seed ledger file (ledger.json)
    run.py      a whole run: what the Trainer saves and restores, and a run's model from a checkpoint

The names below are the package's public surface (`from hyft.checkpoint import verify`); code that patches a
function for a test patches it in the module that defines it.
"""

from hyft.checkpoint.format import (
    FORMAT,
    MARKER,
    PREFIX,
    SUBDIR,
    CheckpointError,
    _verified,
    checkpoint_dir,
    find_checkpoint,
    is_complete,
    list_checkpoints,
    os_error,
    remove_stale,
    restore_moved_aside,
    run_dir_of,
    set_aside_damaged,
    sha256_file,
    step_of,
    storage_error,
    verify,
    write_atomically,
    write_text_atomically,
)
from hyft.checkpoint.ledger import LEDGER, find_ledger, ledger_document, read_ledger, write_ledger
from hyft.checkpoint.run import RunState, load_base_model, load_model_for, load_run, save_run
from hyft.checkpoint.weights import (
    INDEX,
    SHARD_BYTES,
    base_names,
    check_base_shapes,
    check_safetensors,
    dir_bytes,
    is_peft,
    load_adapter,
    load_hf_weights,
    load_state,
    persistent_buffers,
    read_index,
    read_tensors,
    rng_state,
    save_hf_weights,
    save_state,
    set_rng_state,
    unwrap,
    write_tensors,
)

__all__ = [
    "CheckpointError",
    "FORMAT",
    "INDEX",
    "LEDGER",
    "MARKER",
    "PREFIX",
    "RunState",
    "SHARD_BYTES",
    "SUBDIR",
    "_verified",
    "base_names",
    "check_base_shapes",
    "check_safetensors",
    "checkpoint_dir",
    "dir_bytes",
    "find_checkpoint",
    "find_ledger",
    "is_complete",
    "is_peft",
    "ledger_document",
    "list_checkpoints",
    "load_adapter",
    "load_base_model",
    "load_hf_weights",
    "load_model_for",
    "load_run",
    "load_state",
    "os_error",
    "persistent_buffers",
    "read_index",
    "read_ledger",
    "read_tensors",
    "remove_stale",
    "restore_moved_aside",
    "rng_state",
    "run_dir_of",
    "save_hf_weights",
    "save_run",
    "save_state",
    "set_aside_damaged",
    "set_rng_state",
    "sha256_file",
    "step_of",
    "storage_error",
    "unwrap",
    "verify",
    "write_atomically",
    "write_ledger",
    "write_tensors",
    "write_text_atomically",
]
