"""Hostile neighbours (design §10): planted symlinks are never followed, the daemon's files are
private, spool files from untrusted owners are refused, and secrets stay out of every output."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import MAGNUSD, Daemon, wait_for

pytestmark = pytest.mark.reliability


def test_a_symlink_planted_at_the_lock_file_is_not_followed(make_daemon: Callable[..., Daemon],
                                                             root: Path) -> None:
    victim = root / "victim.txt"
    victim.write_text("precious\n")
    d = make_daemon("")
    d.data.mkdir(mode=0o700)
    (d.data / "daemon.lock").symlink_to(victim)
    r = subprocess.run([MAGNUSD, "serve"], env=d.env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0 and "symbolic link" in r.stderr, r.stderr
    assert victim.read_text() == "precious\n"


def test_a_data_directory_of_another_user_is_refused(make_daemon: Callable[..., Daemon],
                                                     root: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to make a directory owned by another user")
    other = root / "theirs"
    other.mkdir(mode=0o755)
    os.chown(other, 65534, 65534)
    d = make_daemon("")
    d.data.symlink_to(other)
    r = subprocess.run([MAGNUSD, "serve"], env=d.env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0 and "owned by uid 65534" in r.stderr, r.stderr
    assert list(other.iterdir()) == []


def test_every_file_the_daemon_makes_is_private(make_daemon: Callable[..., Daemon],
                                                root: Path) -> None:
    d = make_daemon(f"experiment_tracker:\n  type: file\n  config: {{path: '{root / 'f.jsonl'}'}}\n"
                    ).start()
    d.client("""
        from magnus import step, track_this, flush
        with step("s"):
            track_this(x=1)
        assert flush(10)
    """, MAGNUS_RUN_ID="priv")
    wait_for(lambda: d.status()["trackers"][0]["caught_up"], what="caught up")
    assert d.stop() == 0
    seen = 0
    for path in [d.data, *d.data.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
        seen += 1
    assert seen > 8  # journal, checkpoint, cursor, run files, their directories
    token = Path(d.sock + ".lock")
    assert stat.S_IMODE(token.stat().st_mode) == 0o600


def test_spool_files_from_untrusted_owners_or_symlinks_are_not_ingested(
        make_daemon: Callable[..., Daemon], root: Path) -> None:
    d = make_daemon("")
    d.client("""
        from magnus import track_this
        track_this(x=1)
    """, MAGNUS_RUN_ID="spooled", MAGNUS_EXIT_TIMEOUT="0.3")  # no daemon yet: spooled
    spool = d.data / "spool"
    (good,) = list(spool.glob("*.spool"))
    data = good.read_bytes()
    world = spool / "world.spool"
    world.write_bytes(data.replace(b"spooled", b"worldwr"))
    world.chmod(0o666)
    target = root / "elsewhere.bin"
    target.write_bytes(data.replace(b"spooled", b"symlink"))
    (spool / "link.spool").symlink_to(target)
    if os.getuid() == 0:
        other = spool / "other.spool"
        other.write_bytes(data.replace(b"spooled", b"otheruid"[:7]))
        os.chown(other, 65534, 65534)
    d.start()
    wait_for(lambda: d.show("spooled"), what="the trusted spool file ingested")
    for run in ("worldwr", "symlink", "otherui"):
        assert d.show(run) is None, run
    bad = sorted(p.name for p in (spool / "bad").iterdir())
    assert {"world.spool", "link.spool"} <= set(bad)
    assert target.exists()  # the symlink's target is left alone


def test_secrets_given_through_variables_appear_in_no_output(make_daemon: Callable[..., Daemon],
                                                             root: Path) -> None:
    secret = "s3cr3t-" + os.urandom(6).hex()
    d = make_daemon(
        f"experiment_tracker:\n  - type: test-recorder\n    name: rec\n"
        f"    config: {{path: '{root / 'rec.jsonl'}', fail_file: '/nonexistent/${{token}}'}}\n"
        f"  - type: test-faulty\n    name: poison\n"
        f"    config: {{path: '{root / 'p.jsonl'}', fault: permanent, on_values: [2]}}\n",
        extra_env={"MAGNUS_VAR_token": secret}).start()
    wait_for(lambda: len(d.status()["trackers"]) == 2, what="trackers loaded")
    d.client("""
        from magnus import track_this, flush
        for i in range(1, 4):
            track_this(step=i, x=i)
        assert flush(10)
    """, MAGNUS_RUN_ID="sec")
    wait_for(lambda: all(t["caught_up"] for t in d.status()["trackers"]), what="caught up")
    status = json.dumps(d.status())
    show = json.dumps(d.show("sec"))
    assert d.stop() == 0
    outputs = {"status": status, "show": show, "log": d.log.read_text(errors="replace")}
    for path in d.data.rglob("*"):
        if path.is_file():
            outputs[str(path)] = path.read_bytes().decode(errors="replace")
    assert any("dead.jsonl" in k for k in outputs)  # the dead-letter file was checked too
    leaked = [k for k, v in outputs.items() if secret in v]
    assert leaked == []


def test_a_spool_directory_of_another_user_is_not_ingested(make_daemon: Callable[..., Daemon],
                                                           root: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to make a directory owned by another user")
    theirs = root / "theirs"
    d = make_daemon("", extra_env={"MAGNUS_SPOOL_DIR": str(theirs)})
    d.client("from magnus import track_this\ntrack_this(x=1)\n", MAGNUS_RUN_ID="planted",
             MAGNUS_EXIT_TIMEOUT="0.3")  # spooled there, as if another user had put it
    os.chown(theirs, 65534, 65534)
    d.start()
    wait_for(lambda: "not ingesting from it" in d.log.read_text(), what="the refusal logged")
    assert d.show("planted") is None and list(theirs.glob("*.spool"))
