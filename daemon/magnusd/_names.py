"""File names for run ids, step names, keys and tracker names: any string, safely."""

from __future__ import annotations

import urllib.parse


def run_dirname(run_id: str) -> str:
    """A file name for any run id: percent-encoded, and never '.' or '..'-like."""
    name = urllib.parse.quote(run_id, safe="-_")
    return name.replace(".", "%2E")


def run_id_from_dirname(name: str) -> str:
    return urllib.parse.unquote(name)
