"""Config parsing and `magnusd check-config` (design §8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import MAGNUSD
from magnusd import _config


def test_single_and_list_forms_and_default_name() -> None:
    one = _config.parse("experiment_tracker:\n  type: file\n  config: {path: /x}\n", "c", {})
    assert [(t.key, t.type) for t in one.trackers] == [("file", "file")]
    many = _config.parse("experiment_tracker:\n  - type: file\n    name: a\n"
                         "  - type: do-nothing\n", "c", {})
    assert [t.key for t in many.trackers] == ["a", "do-nothing"]
    assert _config.parse("", "c", {}).trackers == []


@pytest.mark.parametrize(("text", "needle"), [
    ("experiment_tracker:\n  type: file\n  confg: {}\n", "confg"),
    ("experiment_trackers: []\n", "experiment_trackers"),
    ("experiment_tracker:\n  config: {}\n", "type"),
    ("experiment_tracker:\n  type: file\n  config:\n    path: ${nope}\n", "MAGNUS_VAR_nope"),
    ("experiment_tracker: [\n", "invalid YAML"),
    ("- 1\n", "mapping"),
    ("experiment_tracker:\n  - {type: file}\n  - {type: file}\n", "two trackers"),
])
def test_errors_name_the_problem(text: str, needle: str) -> None:
    with pytest.raises(_config.ConfigError) as e:
        _config.parse(text, "c.yaml", {})
    assert needle in str(e.value)


def test_substitution() -> None:
    cfg = _config.parse("experiment_tracker:\n  type: file\n  config: {path: '${d}/m.jsonl'}\n",
                        "c", {"MAGNUS_VAR_d": "/tmp/x"})
    assert cfg.trackers[0].config == {"path": "/tmp/x/m.jsonl"}


def test_check_config_cli(tmp_path: Path) -> None:
    import subprocess

    good = tmp_path / "good.yaml"
    good.write_text("experiment_tracker:\n  type: do-nothing\n")
    r = subprocess.run([MAGNUSD, "check-config", str(good)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment_tracker:\n  type: file\n  confg: {}\n")
    r = subprocess.run([MAGNUSD, "check-config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1 and "confg" in r.stderr
    r = subprocess.run([MAGNUSD, "check-config", str(tmp_path / "missing.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "no such file" in r.stderr
