"""Methods are presets of one engine: what happens to the base weights, which PEFT module is attached, and how the
PEFT module is trained. A new method is a new row here, not a new training loop."""

from __future__ import annotations

from dataclasses import dataclass

from hyft.config import choices
from hyft.errors import ConfigError


@dataclass(frozen=True)
class Method:
    base: str  # frozen | fo | zo
    peft: str  # none | lora | prefix | prompt
    adapter: str  # fo | zo (how the PEFT module is trained)
    schedule: str  # default ZO schedule

    @property
    def has_zo(self) -> bool:
        return self.base == "zo" or (self.peft != "none" and self.adapter == "zo")

    @property
    def has_fo(self) -> bool:
        return self.base == "fo" or (self.peft != "none" and self.adapter == "fo")


PRESETS = {
    "ft": Method("fo", "none", "fo", "onesided"),
    "lora": Method("frozen", "lora", "fo", "onesided"),
    "prefix": Method("frozen", "prefix", "fo", "onesided"),
    "prompt": Method("frozen", "prompt", "fo", "onesided"),
    "mezo": Method("zo", "none", "fo", "central"),
    "zo-lora": Method("frozen", "lora", "zo", "central"),
    "hybrid": Method("zo", "lora", "fo", "onesided"),
}
PEFT_TYPES = choices("peft.type")
# Presets whose PEFT module is part of the name: --peft may not contradict them.
_FIXED_PEFT = {"ft": "none", "lora": "lora", "prefix": "prefix", "prompt": "prompt", "mezo": "none", "zo-lora": "lora"}


def resolve(cfg) -> Method:
    """The method a config asks for, with its overrides applied; contradictions are ConfigErrors."""
    if cfg.method not in PRESETS:
        raise ConfigError(f"method: unknown method {cfg.method!r}; choose from {', '.join(PRESETS)}")
    m = PRESETS[cfg.method]
    peft = cfg.peft.type or m.peft
    if peft not in PEFT_TYPES:
        raise ConfigError(f"peft.type: unknown PEFT module {peft!r}; choose from {', '.join(PEFT_TYPES)}")
    fixed = _FIXED_PEFT.get(cfg.method)
    if fixed is not None and cfg.peft.type is not None and peft != fixed:
        raise ConfigError(f"peft.type: method {cfg.method!r} uses {fixed!r}, not {peft!r} (use --method hybrid)")
    base = cfg.base or m.base
    adapter = cfg.adapter_train or m.adapter
    for key, value in (("base", base), ("adapter_train", adapter)):
        allowed = choices(key)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} not in {allowed}")
    out = Method(base, peft, adapter, cfg.zo.schedule or m.schedule)
    if not out.has_zo and not out.has_fo:
        raise ConfigError("method: nothing to train (base frozen and no PEFT module)")
    return out
