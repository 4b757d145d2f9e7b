"""The blocked generator's fp32 passes as compiled loops (native.c), built with the machine's C compiler on first use.

Why: in torch ops a blocked Rademacher pass is five passes over each block (draw, shift, and, xor, add) and the
fp32 update four more; on a 2-core CPU that made the perturbation ~10x a copy of the weights, and the pool threads'
ops each started their own intra-op team. The loops here read the weight once and write once; the random numbers
still come from torch (the block's sign words or randn), so the results are the torch ops' bit for bit and nothing
about the generator changes: a run, its ledger and its checkpoints are the same with or without this library.

Built with `cc -O3 -march=native -ffp-contract=off -shared` into HYFT_CACHE (default ~/.cache/hyft), keyed by the
source, the compiler and the CPU. No compiler, or HYFT_NATIVE=0: `library()` is None and hyft.zo.blocked runs its
torch ops (one warning says why when a build fails). ctypes releases the GIL during each call, so the blocked thread
pool runs them side by side.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

_SOURCE = Path(__file__).with_name("native.c")
_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC"]
_lock = threading.Lock()
_state: dict = {}


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _cpu() -> str:
    try:  # the instruction set -march=native targets: a cached build must not move to another CPU
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(cc: str) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, version.encode(), _cpu().encode(), " ".join(_FLAGS).encode()]))
    cache = Path(os.environ.get("HYFT_CACHE") or Path.home() / ".cache" / "hyft")
    target = cache / f"zo-native-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    errors = []
    for arch in (["-march=native"], []):  # some compilers (or CPUs) have no -march=native
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
        os.close(fd)
        cmd = [cc, *_FLAGS, *arch, "-o", tmp, str(_SOURCE), "-lm"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode == 0:
            os.replace(tmp, target)  # atomic: processes building at once each install a complete file
            return target
        os.unlink(tmp)
        errors.append(done.stderr.strip()[-400:])
    raise RuntimeError(f"{cc} failed: {errors[-1]}")


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, f32, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    lib.hyft_rad_perturb_f32.argtypes = [p, p, p, i64, f32]
    lib.hyft_gauss_perturb_f32.argtypes = [p, p, p, i64, f32]
    lib.hyft_rad_update_f32.argtypes = [p, p, p, i32, i64, f32]
    lib.hyft_gauss_update_f32.argtypes = [p, p, p, i32, i64, f32]
    lib.hyft_ctr_words.argtypes = [p, i64, ctypes.c_uint64, i64]
    lib.hyft_ctr_gauss.argtypes = [p, i64, ctypes.c_uint64, i64]
    lib.hyft_ctr_rad_perturb_f32.argtypes = [p, p, i64, f32, ctypes.c_uint64, i64]
    lib.hyft_ctr_gauss_perturb_f32.argtypes = [p, p, i64, f32, ctypes.c_uint64, i64]
    lib.hyft_ctr_rad_update_f32.argtypes = [p, i64, p, p, i32, f32, i64]
    lib.hyft_ctr_gauss_update_f32.argtypes = [p, i64, p, p, i32, f32, i64]
    for name in ("rad", "gauss"):
        for f in (f"{name}_perturb_f32", f"{name}_update_f32", f"ctr_{name}_perturb_f32", f"ctr_{name}_update_f32"):
            getattr(lib, f"hyft_{f}").restype = None
    lib.hyft_ctr_words.restype = lib.hyft_ctr_gauss.restype = None
    lib.hyft_max_queries.argtypes, lib.hyft_max_queries.restype = [], ctypes.c_int
    lib.max_queries = lib.hyft_max_queries()  # more queries than this: hyft.zo.blocked's per-block path
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled passes, or None where they cannot be built or HYFT_NATIVE=0 (see the module docstring)."""
    if os.environ.get("HYFT_NATIVE", "1") == "0":
        return None
    if "lib" in _state:
        return _state["lib"]
    with _lock:
        if "lib" not in _state:
            _state["lib"] = None
            cc = _compiler()
            if cc is None:
                warnings.warn("hyft: no C compiler; blocked ZO passes run as torch ops", stacklevel=2)
                return None
            try:
                _state["lib"] = _bind(ctypes.CDLL(str(_build(cc))))
            except Exception as e:  # any failure means: use the torch ops, which give the same numbers
                warnings.warn(f"hyft: the native ZO passes did not build ({e}); running torch ops", stacklevel=2)
    return _state["lib"]


def error() -> str | None:
    """Why `library()` is None (for the benchmark and the tests), else None."""
    if os.environ.get("HYFT_NATIVE", "1") == "0":
        return "HYFT_NATIVE=0"
    if library() is not None:
        return None
    return "no C compiler" if _compiler() is None else "the build failed (see the warning)"
