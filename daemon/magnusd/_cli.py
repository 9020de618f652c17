"""`magnusd`: serve | status | runs | show | ui | tail | compare | check-config (design §6, §12).

This module is the command line itself: the argument parser and the dispatch to the commands
(`_commands.py`). Every command prints a one-line error and exits non-zero on failure
(`EXIT_NOT_RUNNING` when the daemon it needs is not running, 1 otherwise). `runs` and `show`
read the data directory directly, so they work whether or not the daemon runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._commands import (
    cmd_check_config,
    cmd_compare,
    cmd_install_units,
    cmd_runs,
    cmd_serve,
    cmd_show,
    cmd_status,
    cmd_tail,
    cmd_ui,
)
from ._commands import request_status as request_status
from ._errors import MagnusdError, NotRunning

EXIT_NOT_RUNNING = 3


def _common(p: argparse.ArgumentParser, *which: str) -> None:
    if "socket" in which:
        p.add_argument("--socket", help="Unix socket path (env MAGNUS_SOCKET)")
    if "data_dir" in which:
        p.add_argument("--data-dir", dest="data_dir", help="data directory (env MAGNUS_DATA_DIR)")
    if "config" in which:
        p.add_argument("--config", help="config file (env MAGNUS_CONFIG)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="magnusd", description="The magnus tracking daemon.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the daemon in the foreground")
    _common(p, "socket", "data_dir", "config")
    p.add_argument("--fsync-interval", dest="fsync_interval", type=float,
                   help="max seconds between journal fsyncs (env MAGNUS_FSYNC_INTERVAL; 0.1)")
    p.add_argument("--allow-uid", dest="allow_uids", action="append",
                   help="also accept clients of this uid (repeatable; env MAGNUS_ALLOW_UIDS)")
    p.add_argument("--journal-max-bytes", dest="journal_max_bytes", type=int,
                   help="journal disk cap (env MAGNUS_JOURNAL_MAX_BYTES; 10 GiB)")
    p.add_argument("--log-level", dest="log_level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--ui-listen", dest="ui_listen", metavar="HOST:PORT",
                   help="where the web viewer listens (env MAGNUS_UI_LISTEN; 127.0.0.1:7470)")
    p.add_argument("--no-ui", dest="no_ui", action="store_true", help="no web viewer")

    p = sub.add_parser("status", help="the running daemon's state (exit 3 when not running)")
    _common(p, "socket")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("runs", help="list runs")
    _common(p, "data_dir")
    p.add_argument("--tag")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("show", help="one run log")
    _common(p, "data_dir")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", metavar="KEY", help="a terminal chart of one metric's series")
    p.add_argument("--step-name", dest="step_name", help="the step of --plot's key")

    p = sub.add_parser("ui", help="open the web viewer (or print its link with --print-url)")
    _common(p, "socket")
    p.add_argument("--print-url", dest="print_url", action="store_true")

    p = sub.add_parser("tail", help="live events, one line each, until interrupted")
    _common(p, "data_dir")
    p.add_argument("--run", help="only this run")
    p.add_argument("--tag", help="only runs of this tag")
    p.add_argument("--key", help="only this metric")

    p = sub.add_parser("compare", help="each metric's last/min/max, per run")
    _common(p, "data_dir")
    p.add_argument("run_ids", metavar="RUN", nargs="+")

    p = sub.add_parser("install-units", help="write the systemd units for this installation")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--user", dest="scope", action="store_const", const="user",
                       help="a user service and socket (default)")
    scope.add_argument("--system", dest="scope", action="store_const", const="system",
                       help="a system service and socket (group magnus)")
    p.add_argument("--dry-run", action="store_true", help="print the units, write nothing")
    p.add_argument("--target", help="directory to write to (default: systemd's for the scope)")

    p = sub.add_parser("check-config", help="validate a config file")
    _common(p, "config")
    p.add_argument("path", nargs="?", metavar="PATH")
    return ap


COMMANDS = {"serve": cmd_serve, "install-units": cmd_install_units, "status": cmd_status,
            "runs": cmd_runs, "show": cmd_show, "ui": cmd_ui, "tail": cmd_tail,
            "compare": cmd_compare, "check-config": cmd_check_config}


def main(argv: Sequence[str] | None = None) -> int:
    from ._systemd import install_early_signal_handlers, restore_default_signal_handlers

    install_early_signal_handlers()  # before anything slow: a SIGHUP must not kill `serve`
    args = parser().parse_args(argv)
    if args.command != "serve":
        restore_default_signal_handlers()
    try:
        return COMMANDS[args.command](args)
    except NotRunning as e:
        print(f"magnusd: {e}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except MagnusdError as e:
        print(f"magnusd: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    sys.exit(main())
