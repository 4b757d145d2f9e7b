"""Which tensors are trained by first order, updated by zeroth order, or frozen.

Groups are chosen by structure: adapter tensors are those the PEFT library registered (the caller passes them, from
peft's own bookkeeping), embeddings are nn.Embedding modules, the output head is the module the model reports as its
output embedding. Name patterns (fnmatch globs on parameter names) only narrow the ZO group on the user's request.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from torch import nn

from hyft.config import choices

TREATMENTS = choices("base")  # what happens to a group of tensors: the choices of the config key `base`


@dataclass
class Partition:
    fo: list[nn.Parameter] = field(default_factory=list)
    zo: list[nn.Parameter] = field(default_factory=list)
    frozen: list[nn.Parameter] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)

    def count(self, kind: str) -> int:
        return sum(p.numel() for p in getattr(self, kind))

    def summary(self) -> dict[str, int]:
        return {f"{k}_params": self.count(k) for k in ("fo", "zo", "frozen")}


def partition(
    model: nn.Module,
    *,
    adapter_params: Iterable[nn.Parameter],
    base: str,
    adapter: str = "fo",
    head_modules: Sequence[nn.Module] = (),
    zo_embeddings: bool = True,
    zo_head: bool = True,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> Partition:
    """Split the model's parameters and set requires_grad: True exactly for the FO group.

    base / adapter: "frozen", "fo" or "zo" for the model's own weights and for the PEFT tensors.
    The embedding/head switches and include/exclude patterns apply to base tensors under "zo" only.
    """
    for what, value in (("base", base), ("adapter", adapter)):
        if value not in TREATMENTS:
            raise ValueError(f"{what} treatment {value!r} not in {TREATMENTS}")
    adapter_ids = {id(p) for p in adapter_params}
    skipped_modules: list[nn.Module] = []
    if not zo_embeddings:
        skipped_modules += [m for m in model.modules() if isinstance(m, nn.Embedding)]
    if not zo_head:
        skipped_modules += list(head_modules)
    skipped = {id(p) for m in skipped_modules for p in m.parameters(recurse=False)}

    out = Partition()
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        out.names[id(p)] = name
        if id(p) in adapter_ids:
            kind = adapter
        elif base == "zo" and (
            id(p) in skipped
            or (include and not any(fnmatch.fnmatch(name, pat) for pat in include))
            or any(fnmatch.fnmatch(name, pat) for pat in exclude)
        ):
            kind = "frozen"
        else:
            kind = base
        getattr(out, kind).append(p)
        p.requires_grad_(kind == "fo")
    return out
