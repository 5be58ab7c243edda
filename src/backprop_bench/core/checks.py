"""The project's one way to check a config value: errors name the file, the key, the value and the rule.

    params.yaml: study.seeds=0: must be an integer >= 1

Two callers. The Hydra config path (training/config.py, the specs) checks composed values
with ``check`` and ``check_choice``. The stages read their params.yaml section with
``read_section`` (or wrap a mapping they loaded in a ``Section``) and take each key through
its typed checks, which name the file and the dotted key. Every failure is a ``ParamsError``
(a ValueError), but for ``check_choice``, which keeps the wording its callers and
docs/architecture.md quote: ValueError "option='x' is not one of a, b".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REQUIRED: Any = object()  # the default of a Section key that has none: a missing key is an error


class ParamsError(ValueError):
    """A config value, or a params file, that breaks a rule: "[file: ][key=value: ]rule".

    key is dotted ("study.seeds", "study.modes[1]"); None for a rule about the whole file
    ("params.yaml: params file not found"). file is None where no file is known.
    """

    def __init__(self, key: str | None, value: object, rule: str, file: str | Path | None = None) -> None:
        self.key, self.value, self.rule, self.file = key, value, rule, file
        parts = [] if file is None else [str(file)]
        if key is not None:
            parts.append(f"{key}={value!r}")
        super().__init__(": ".join([*parts, rule]))


def check(ok: bool, option: str, value: object, rule: str, file: str | Path | None = None) -> None:
    """Raise ParamsError "[file: ]option=value: rule" unless ok, e.g. "train.epochs=-1: must be >= 1"."""
    if not ok:
        raise ParamsError(option, value, rule, file)


def check_choice(option: str, value: str, allowed: Sequence[str]) -> None:
    """Raise ValueError naming the option, its value and the allowed values."""
    if value not in allowed:
        raise ValueError(f"{option}={value!r} is not one of {', '.join(allowed)}")


def is_integer(value: object, least: int) -> bool:
    """An int >= least. A bool is no integer here, although Python's True == 1: YAML's `true` is no count."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def is_number(value: object) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def params_file(path: str | Path) -> Path:
    """path as a Path; ParamsError "<path>: params file not found" if it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(None, None, "params file not found", path)
    return path


def read_section(path: str | Path, name: str) -> Section:
    """The top-level `name:` section of a YAML params file, checked to be a mapping."""
    import yaml  # PyYAML comes with DVC and OmegaConf; imported here, as only the stages read params

    return Section.top(yaml.safe_load(params_file(path).read_text()), name, path)


@dataclass(frozen=True)
class Section:
    """One mapping of a params file and where it is (its dotted name and the file), so that
    every check on one of its keys names the file, the full key, the value and the rule."""

    values: Mapping[str, Any]
    name: str  # dotted, the prefix of its keys: "study", "data.url"
    file: str | Path | None = None

    @classmethod
    def top(cls, params: object, name: str, file: str | Path | None = None) -> Section:
        """params[name], a loaded file's top-level section; it must be a mapping."""
        value = params.get(name) if isinstance(params, Mapping) else None
        check(isinstance(value, Mapping), name, value, f"must be a top-level '{name}:' section (a mapping)", file)
        return cls(value, name, file)

    def sub(self, key: str) -> Section:
        """The mapping at key; absent or null reads as an empty one (its keys then take their defaults)."""
        value = self.values.get(key)
        value = {} if value is None else value
        self.check(isinstance(value, Mapping), key, value, "must be a mapping")
        return Section(value, f"{self.name}.{key}", self.file)

    def check(self, ok: bool, key: str, value: object, rule: str) -> None:
        """ParamsError "file: name.key=value: rule" unless ok."""
        check(ok, f"{self.name}.{key}", value, rule, self.file)

    def get(self, key: str, default: Any = REQUIRED) -> Any:
        """The value at key as it is; default when absent, or "is missing" if there is none."""
        if key in self.values:
            return self.values[key]
        self.check(default is not REQUIRED, key, None, "is missing")
        return default

    def integer(self, key: str, least: int, default: Any = REQUIRED, rule: str | None = None) -> int:
        """An integer >= least; rule replaces the default wording "must be an integer >= least"."""
        value = self.get(key, default)
        self.check(is_integer(value, least), key, value, rule or f"must be an integer >= {least}")
        return value

    def number(self, key: str, least: float, default: Any = REQUIRED, *, strict: bool = False) -> float:
        """A finite number >= least (> least when strict), as a float."""
        value = self.get(key, default)
        ok = is_number(value) and (value > least if strict else value >= least)
        self.check(ok, key, value, f"must be a number {'>' if strict else '>='} {least:g}")
        return float(value)

    def choice(self, key: str, allowed: Sequence[str], default: Any = REQUIRED) -> str:
        """One of allowed."""
        value = self.get(key, default)
        self.check(value in allowed, key, value, f"must be one of {', '.join(allowed)}")
        return value

    def choices(self, key: str, allowed: Sequence[str], default: Any = REQUIRED) -> tuple[str, ...]:
        """A list of values from allowed, non-empty unless the default is the empty list; a bad
        item is named by its index, "study.modes[1]"."""
        value = self.get(key, default)
        empty_ok = isinstance(default, list) and not default
        ok = isinstance(value, list) and (len(value) > 0 or empty_ok)
        kind = "list" if empty_ok else "non-empty list"
        self.check(ok, key, value, f"must be a {kind} of {', '.join(allowed)}")
        for i, item in enumerate(value):
            self.check(item in allowed, f"{key}[{i}]", item, f"must be one of {', '.join(allowed)}")
        return tuple(value)
