"""Rules for config values: `setting(128, min=1, max=65536)` declares a field with the values it accepts, and
`problems(config)` lists every value of a composed config outside its rule, plus the cross-field rules a schema
states in its `problems` method, before any data is read. Imports nothing from gentrain.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from omegaconf import MISSING

SEED_MAX = 2**31 - 1  # numpy seeds must stay below 2^32, and seeds get small offsets added
SIZE_MAX = 65536  # widths, batch sizes: far beyond any real run, far below an allocation that kills the machine


@dataclass(frozen=True)
class Rule:
    """The values a field accepts: bounds (inclusive `min`/`max`, exclusive `above`/`below`), oddness, a kind
    of path that must exist. Lists are checked element by element, `min_items` counts them."""

    min: Optional[float] = None
    max: Optional[float] = None
    above: Optional[float] = None
    below: Optional[float] = None
    odd: bool = False
    min_items: Optional[int] = None
    items: Optional[int] = None  # exact length of a list
    choices: Optional[tuple] = None  # the only values allowed
    path: Optional[str] = None  # "dir" or "file": must exist
    pattern: Optional[str] = None  # a regular expression the whole string must match
    meaning: str = ""  # the accepted values in words, used instead of the bounds in the message

    def describe(self) -> str:
        if self.meaning:
            return self.meaning
        if self.path:
            return f"an existing {'folder' if self.path == 'dir' else 'file'}"
        if self.choices:
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.min is not None and self.max is not None:
            bounds = [f"between {_number(self.min)} and {_number(self.max)}"]
        else:
            bounds = [f"{sign} {_number(value)}" for sign, value in
                      ((">=", self.min), ("<=", self.max)) if value is not None]
        bounds += [f"{sign} {_number(value)}" for sign, value in
                   ((">", self.above), ("<", self.below)) if value is not None]
        text = " and ".join(bounds)
        return f"an odd number {text}".strip() if self.odd else text

    def accepts(self, value: Any) -> bool:
        if isinstance(value, (list, tuple)):
            if self.items is not None and len(value) != self.items:
                return False
            if self.min_items is not None and len(value) < self.min_items:
                return False
            return all(self.accepts(v) for v in value)
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool):
            return True
        if isinstance(value, (int, float)):
            if isinstance(value, float) and not math.isfinite(value):
                return False
            return not (
                (self.min is not None and value < self.min) or (self.max is not None and value > self.max)
                or (self.above is not None and value <= self.above) or (self.below is not None and value >= self.below)
                or (self.odd and int(value) % 2 == 0)
            )
        if isinstance(value, str):
            if self.pattern is not None and not re.fullmatch(self.pattern, value):
                return False
            if self.path == "dir":
                return Path(value).expanduser().is_dir()
            if self.path == "file":
                return Path(value).expanduser().is_file()
        return True


def _number(value: Optional[float]) -> str:
    if value is None:
        return ""
    if float(value).is_integer() and abs(value) >= 2**20:
        return f"2^{int(math.log2(value))}" if math.log2(value).is_integer() else f"{int(value):,}"
    return f"{int(value)}" if float(value).is_integer() else f"{value:g}"


def setting(default: Any = MISSING, *, factory: Any = None, **rule: Any) -> Any:
    """A dataclass field with a Rule: `batch_size: int = setting(128, min=1, max=SIZE_MAX)`."""
    metadata = {"rule": Rule(**rule)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def problems(config: Any, prefix: str = "") -> Iterator[str]:
    """Every value of a composed config (dataclass instances) that breaks its field's Rule or its schema's
    cross-field rules, as one-line messages naming the full key: 'trainer.batch_size must be >= 1, got 0'."""
    if not dataclasses.is_dataclass(config):
        return
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from problems(value, f"{key}.")
            continue
        rule = f.metadata.get("rule")
        if rule is None or value is None or value is MISSING or rule.accepts(value):
            continue
        shown = list(value) if isinstance(value, (list, tuple)) else value
        nullable = " (or null)" if "Optional" in str(f.type) else ""
        what = "a list of values each " if isinstance(value, (list, tuple)) and rule.items is None else ""
        if rule.items is not None:
            what = f"a list of {rule.items} values each "
        elif rule.min_items:
            what = f"a list of at least {rule.min_items} value(s) each "
        yield f"{key} must be {what}{rule.describe()}{nullable}, got {shown}"
    cross_field = getattr(config, "problems", None)
    if callable(cross_field):  # a schema's rules between fields, given the key prefix to name them with
        yield from cross_field(prefix)
