"""The daemon's exceptions. Each message says what to do about the problem.

    MagnusdError
    ├── AlreadyRunning     another daemon holds the socket or the data directory
    ├── SettingsError      a setting (option, environment variable) is unusable
    └── NotRunning         a command needs the daemon and none answers on the socket
"""

from __future__ import annotations


class MagnusdError(Exception):
    """Base class: the CLI prints the message on one line and exits non-zero."""


class AlreadyRunning(MagnusdError):
    pass


class SettingsError(MagnusdError):
    pass


class NotRunning(MagnusdError):
    pass
