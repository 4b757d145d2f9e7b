"""Method variants: the names `hyft compare --methods` accepts, and the config overrides each stands for.

a preset                  ft, lora, prefix, prompt, mezo, zo-lora, hybrid (methods.PRESETS)
preset-suffix[-suffix]    a suffix is a choice of peft.type, fo.optimizer or zo.schedule (their config fields'
                          choices); e.g. hybrid-prefix, lora-adamw, hybrid-central
a `variants:` entry       in the config's `compare:` section, name -> config overrides (nested or dotted keys)
NAME=BASE+key=value+...   inline: BASE is any of the above, then dotted config overrides
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hyft.config import choices, expand, merge, parse_value
from hyft.errors import ConfigError
from hyft.methods import PRESETS

# suffix -> the config key it sets; the suffixes are the keys' own choices (one declaration per knob)
SUFFIXES = {
    **{k: ("peft", "type") for k in choices("peft.type") if k != "none"},
    **{k: ("fo", "optimizer") for k in choices("fo.optimizer")},
    **{k: ("zo", "schedule") for k in choices("zo.schedule")},
}


@dataclass
class Variant:
    name: str
    overrides: dict[str, Any]  # nested config mapping, method included


def builtin_variant(name: str) -> dict[str, Any]:
    if name in PRESETS:
        return {"method": name}
    bases = sorted((p for p in PRESETS if name.startswith(p + "-")), key=len, reverse=True)
    if not bases:
        raise ConfigError(
            f"method {name!r}: not a preset ({', '.join(PRESETS)}), a preset with suffixes "
            f"({', '.join(SUFFIXES)}), a variant from the config's compare.variants, or NAME=BASE+key=value"
        )
    out: dict[str, Any] = {"method": bases[0]}
    for token in name[len(bases[0]) + 1 :].split("-"):
        if token not in SUFFIXES:
            raise ConfigError(f"method {name!r}: unknown suffix {token!r}; suffixes: {', '.join(SUFFIXES)}")
        section, key = SUFFIXES[token]
        out = merge(out, {section: {key: token}})
    return out


def parse_variant(spec: str, variants: dict[str, dict[str, Any]], _depth: int = 0) -> Variant:
    """A method spec -> its name and config overrides (see the module docstring)."""
    spec = spec.strip()
    if _depth > 10:
        raise ConfigError(f"method {spec!r}: variants refer to each other in a loop")
    if "=" in spec.split("+", 1)[0]:
        name, body = spec.split("=", 1)
        if not name or "/" in name:
            raise ConfigError(f"method {spec!r}: a variant name must be non-empty and have no '/'")
        base, *pairs = body.split("+")
        over = parse_variant(base, variants, _depth + 1).overrides
        for pair in pairs:
            if "=" not in pair:
                raise ConfigError(f"method {spec!r}: expected key=value after '+', got {pair!r}")
            k, v = pair.split("=", 1)
            over = merge(over, expand({k.strip(): parse_value(v.strip())}))
        return Variant(name.strip(), over)
    if "+" in spec:
        raise ConfigError(f"method {spec!r}: give an inline variant a name, e.g. my-{spec.split('+')[0]}={spec}")
    if spec in variants:
        v = variants[spec]
        if not isinstance(v, dict):
            raise ConfigError(f"compare.variants.{spec}: expected a mapping of config overrides")
        v = expand(v)
        base = v.pop("base", None)
        if base == spec:  # `lora: {base: lora, ...}` refines the built-in lora
            over = builtin_variant(spec)
        else:
            over = parse_variant(base, variants, _depth + 1).overrides if base else {}
        over = merge(over, v)
        if "method" not in over:
            try:
                over = merge(builtin_variant(spec), over)
            except ConfigError:
                raise ConfigError(f"compare.variants.{spec}: give a `method:` or a `base:` variant") from None
        return Variant(spec, over)
    return Variant(spec, builtin_variant(spec))
