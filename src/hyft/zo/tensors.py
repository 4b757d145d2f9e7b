"""Which tensors the ZO group updates, and the stable index that keys each tensor's random streams."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ZOTensor:
    """One ZO-updated tensor: its stable index (the RNG key), the module that owns it and its attribute name."""

    index: int
    param: nn.Parameter
    owners: tuple[tuple[nn.Module, str], ...]  # several for tied weights (e.g. embedding and lm_head)


def zo_tensors(model: nn.Module, params: Sequence[nn.Parameter]) -> list[ZOTensor]:
    """Index ZO parameters by their first appearance in model.named_modules() order (stable across runs and ranks)."""
    wanted = {id(p) for p in params}
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    order: list[nn.Parameter] = []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in wanted:
                if id(p) not in owners:
                    owners[id(p)] = []
                    order.append(p)
                owners[id(p)].append((module, name))
    missing = wanted - set(owners)
    if missing:
        raise ValueError(f"{len(missing)} ZO parameters are not registered in the model")
    return [ZOTensor(i, p, tuple(owners[id(p)])) for i, p in enumerate(order)]
