"""A run's data: the task's splits (loaded once, seeded) and the order the training split is drawn in."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hyft.config import Config
from hyft.errors import ConfigError
from hyft.zo.rng import DATA, mix


@dataclass
class DataOrder:
    """Random reshuffling: a fresh seeded permutation every epoch; (epoch, position) is the whole state."""

    n: int
    seed: int
    epoch: int = 0
    position: int = 0
    _perm: list[int] = field(default_factory=list, repr=False)

    def permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(mix(DATA, self.seed, epoch))
        return torch.randperm(self.n, generator=g).tolist()

    def next(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if not self._perm:
                self._perm = self.permutation(self.epoch)
            take = self._perm[self.position : self.position + k - len(out)]
            out += take
            self.position += len(take)
            if self.position >= self.n:
                self.epoch, self.position, self._perm = self.epoch + 1, 0, []
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._perm = int(state["epoch"]), int(state["position"]), []


def load_data(cfg: Config):
    from hyft import tasks

    d = cfg.data
    kw = dict(n_train=d.n_train, n_dev=d.n_dev, n_test=d.n_test, seed=cfg.seed)
    if d.task == "user":
        if not d.dataset:
            raise ConfigError("data.dataset: task 'user' needs a dataset spec")
        return tasks.load_user_task(d.dataset, **kw)
    return tasks.load_task(d.task, d.data_dir, **kw, **d.options)
