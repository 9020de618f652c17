"""Default locations, shared by the SDK and the daemon so both sides agree.

Each function takes the environment as an argument and resolves: environment variable, then
the platformdirs default. platformdirs is imported only when a default is needed (never on
`import magnus`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

APP = "magnus"
SOCKET_NAME = "magnusd.sock"


def _platformdirs(kind: str) -> str:
    import platformdirs

    with warnings.catch_warnings():
        # user_runtime_dir warns once when XDG_RUNTIME_DIR is unset and falls back.
        warnings.simplefilter("ignore")
        return str(getattr(platformdirs, kind)(APP))


def socket_path(environ: Mapping[str, str]) -> str:
    if environ.get("MAGNUS_SOCKET"):
        return environ["MAGNUS_SOCKET"]
    runtime = environ.get("RUNTIME_DIRECTORY") or _platformdirs("user_runtime_dir")
    return os.path.join(runtime.split(":")[0], SOCKET_NAME)


def data_dir(environ: Mapping[str, str]) -> str:
    if environ.get("MAGNUS_DATA_DIR"):
        return environ["MAGNUS_DATA_DIR"]
    state = environ.get("STATE_DIRECTORY")
    return state.split(":")[0] if state else _platformdirs("user_data_dir")


def spool_dir(environ: Mapping[str, str]) -> str:
    return environ.get("MAGNUS_SPOOL_DIR") or os.path.join(data_dir(environ), "spool")


def config_path(environ: Mapping[str, str]) -> str:
    if environ.get("MAGNUS_CONFIG"):
        return environ["MAGNUS_CONFIG"]
    return os.path.join(_platformdirs("user_config_dir"), "config.yaml")
