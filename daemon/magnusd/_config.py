"""The configuration file (design §8): YAML decoded into msgspec structs.

Unknown keys are errors naming the key path; `${name}` is replaced by the environment variable
`MAGNUS_VAR_name`, and an unresolved name is an error naming it. A missing file means no
trackers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
import yaml

from ._sources import SourceDef
from ._sources import decode as decode_source

_VAR = re.compile(r"\$\{([^}]*)\}")


class TrackerDef(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    type: str
    name: str | None = None
    config: dict[str, Any] = {}
    backfill: bool = False
    context: bool = False  # the tracker get_experiment_tracker_context() uses
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 120.0  # one call; then the worker dies
    max_memory_mb: Annotated[int, msgspec.Meta(gt=0)] | None = None  # worker RSS bound

    @property
    def key(self) -> str:
        return self.name or self.type


class Config(msgspec.Struct, forbid_unknown_fields=True):
    experiment_tracker: TrackerDef | list[TrackerDef] | None = None
    sources: list[SourceDef] | None = None  # streams a central daemon reads (design §13)

    @property
    def trackers(self) -> list[TrackerDef]:
        t = self.experiment_tracker
        return [] if t is None else [t] if isinstance(t, TrackerDef) else list(t)


class ConfigError(ValueError):
    """Every problem found in a config file, one per line."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}: {p}" for p in problems))


def substitute(value: Any, environ: Mapping[str, str], where: str, problems: list[str]) -> Any:
    if isinstance(value, str):
        def one(m: re.Match[str]) -> str:
            name = m.group(1)
            got = environ.get(f"MAGNUS_VAR_{name}")
            if got is None:
                problems.append(f"{where}: ${{{name}}} is not defined "
                                f"(set the environment variable MAGNUS_VAR_{name})")
                return m.group(0)
            return got

        return _VAR.sub(one, value)
    if isinstance(value, dict):
        return {k: substitute(v, environ, f"{where}.{k}", problems) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, environ, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    return value


def parse(text: str, path: str, environ: Mapping[str, str]) -> Config:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(path, [f"invalid YAML: {e}".replace("\n", " ")]) from None
    if raw is None:
        return Config()
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError(path, [f"$: expected a mapping, got {type(raw).__name__}"])
    raw = substitute(raw, environ, "$", problems)
    try:
        cfg = msgspec.convert(raw, Config)
    except msgspec.ValidationError as e:
        problems.append(with_line(str(e), text))
        raise ConfigError(path, problems) from None
    names = [t.key for t in cfg.trackers]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"$.experiment_tracker: two trackers are named {dup!r} (set `name:`)")
    names = [s.key for s in cfg.sources or []]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"$.sources: two sources are named {dup!r} (set `name:`)")
    for i, src in enumerate(cfg.sources or []):
        try:
            decode_source(src, f"$.sources[{i}]")
        except ValueError as e:
            problems.append(with_line(str(e), text))
    chosen = [t.key for t in cfg.trackers if t.context]
    if len(chosen) > 1:
        problems.append("$.experiment_tracker: `context: true` is set on more than one tracker "
                        f"({', '.join(chosen)}); get_experiment_tracker_context() uses one")
    if problems:
        raise ConfigError(path, problems)
    return cfg


_AT = re.compile(r"at `(\$[^`]*)`")
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_UNKNOWN = re.compile(r"unknown field `([^`]+)`")


def with_line(message: str, text: str) -> str:
    """Append the YAML line of the key path a msgspec error names, when it can be found."""
    m = _AT.search(message)
    where = m.group(1) if m else "$"
    steps: list[str | int] = [k if k else int(i) for k, i in _STEP.findall(where[1:])]
    unknown = _UNKNOWN.search(message)
    if unknown:
        steps.append(unknown.group(1))
        if not m:
            message += " - at `$`"
    try:
        node: Any = yaml.compose(text)
    except yaml.YAMLError:
        return message
    line = None
    for step in steps:
        if isinstance(node, yaml.MappingNode) and isinstance(step, str):
            match = [(k, v) for k, v in node.value if k.value == step]
            if not match:
                break
            line = match[0][0].start_mark.line + 1
            node = match[0][1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int):
            if step >= len(node.value):
                break
            node = node.value[step]
            line = node.start_mark.line + 1
        else:
            break
    else:
        if node is not None and not unknown:
            line = node.start_mark.line + 1
    return f"{message} (line {line})" if line else message


def load(path: str, environ: Mapping[str, str]) -> Config:
    """The config at `path`; a missing file is an empty config."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return Config()
    except OSError as e:
        raise ConfigError(path, [f"cannot read: {e.strerror}"]) from None
    return parse(text, path, environ)


def raw_definitions(text: str) -> list[dict[str, Any]]:
    """Tracker definitions as written, `${name}` unexpanded (secrets stay out of run logs)."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return []
    t = raw.get("experiment_tracker") if isinstance(raw, dict) else None
    items = [] if t is None else t if isinstance(t, list) else [t]
    out = []
    for d in items:
        if isinstance(d, dict):
            d = dict(d)
            d.setdefault("name", d.get("type"))
            out.append(d)
    return out


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError):
        return None
