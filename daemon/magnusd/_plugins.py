"""The tracker registry: the entry-point group `experiment_tracker`, built-ins included.

Built-ins register through the same group in this distribution's metadata (pyproject.toml), so
a plugin is found exactly like a built-in. A plugin that fails to import is reported with its
error, never fatal for the daemon.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

import msgspec

from ._errors import MagnusdError
from ._tracker import BaseExperimentTracker

GROUP = "experiment_tracker"


class PluginError(MagnusdError):
    """A tracker type that is unknown, fails to import, or rejects its config."""


def available() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def load_class(type_name: str) -> type[BaseExperimentTracker]:
    eps = available()
    ep = eps.get(type_name)
    if ep is None:
        known = ", ".join(sorted(eps)) or "none"
        raise PluginError(f"unknown tracker type {type_name!r} (installed: {known})")
    try:
        cls = ep.load()
    except Exception as e:  # a broken plugin must not take the daemon down
        raise PluginError(f"tracker type {type_name!r} failed to import ({ep.value}): "
                          f"{type(e).__name__}: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, BaseExperimentTracker)):
        raise PluginError(f"tracker type {type_name!r} ({ep.value}) is not a "
                          "BaseExperimentTracker subclass")
    return cls


def decode_config(cls: type[BaseExperimentTracker], raw: dict[str, Any], where: str) -> Any:
    """The tracker's `config:` block as its Config struct; errors name the key path."""
    try:
        return msgspec.convert(raw, cls.Config)
    except msgspec.ValidationError as e:
        msg = str(e).replace("`$", f"`{where}", 1).replace("- at `$", f"- at `{where}")
        if "- at `" not in msg:
            msg += f" - at `{where}`"
        raise PluginError(msg) from None


def check_available(cls: type[BaseExperimentTracker], type_name: str) -> None:
    """Fail with the extra to install when the tracker's library is missing."""
    try:
        cls.check_library()
    except Exception as e:  # ImportError, or a broken install failing otherwise on import
        hint = f"; install the extra: pip install 'magnusd[{cls.extra}]'" if cls.extra else ""
        raise PluginError(f"tracker type {type_name!r} needs a library that is not "
                          f"installed ({e}){hint}") from None
