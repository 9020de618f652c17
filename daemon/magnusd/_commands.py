"""The commands of `magnusd` (parsed by `_cli.py`): each takes the parsed arguments and returns
the exit status.

Settings resolve option > environment > default (`_settings.resolve`). A failure is raised as a
`MagnusdError` (`NotRunning` when the daemon does not answer) for `_cli.main` to print in one
line; nothing here prints a traceback. `serve` owns the process: logging (journald-style
priority prefixes when stderr goes to journald), the private umask, the descriptor limit.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from typing import Any, ClassVar

import msgspec

from ._errors import MagnusdError, NotRunning
from ._settings import Settings, resolve


def _json(obj: Any) -> str:
    # Values tracked by clients are JSON-friendly; anything odd a foreign client slipped in
    # (nested bytes) is rendered, never fatal.
    return msgspec.json.encode(obj, enc_hook=repr).decode()


def settings_of(args: argparse.Namespace) -> Settings:
    opts = {k: v for k, v in vars(args).items() if v is not None}
    if isinstance(opts.get("allow_uids"), list):
        opts["allow_uids"] = ",".join(opts["allow_uids"])
    return resolve(opts, os.environ)


class JournaldFormatter(logging.Formatter):
    """`<N>` syslog priority prefixes and no timestamps: journald adds its own."""

    PRIORITY: ClassVar[dict[int, int]] = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4,
                                          logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        prio = self.PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in super().format(record).splitlines())


def configure_logging(level: str, environ: Any) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if environ.get("JOURNAL_STREAM"):  # stderr goes to journald
        handler.setFormatter(JournaldFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # one line per file event


def _raise_fd_limit() -> None:
    """One descriptor per client: take the hard limit (when the soft one is lower)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cmd_serve(args: argparse.Namespace) -> int:
    import anyio

    from ._server import Daemon

    configure_logging(args.log_level, os.environ)
    settings = settings_of(args)
    # Everything the daemon creates is private (0600 files, 0700 directories); tracker
    # workers get the user's own umask back for the files they write.
    os.environ["MAGNUS_WORKER_UMASK"] = f"{os.umask(0o077):o}"
    _raise_fd_limit()

    async def serve() -> None:  # anyio primitives must be made inside the event loop
        await Daemon(settings, dict(os.environ)).run()

    anyio.run(serve)
    return 0


def request_status(path: str, timeout: float = 5.0) -> dict[str, Any]:
    from magnus import _protocol as proto

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(proto.frame(proto.Hello(proto.PROTOCOL_VERSION, "cli-" + os.urandom(4).hex(),
                                          os.getpid()))
                  + proto.frame(proto.StatusRequest()))
        buf = bytearray()
        while True:
            frames, used, error = proto.split_frames(buf)
            del buf[:used]
            for f in frames:
                msg = proto.decoder.decode(f)
                if isinstance(msg, proto.StatusReply):
                    return msg.body
                if isinstance(msg, proto.Error):
                    raise MagnusdError(f"the daemon at {path} refused: {msg.message}")
            if error:
                raise MagnusdError(f"bad reply from the daemon at {path}: {error}")
            chunk = s.recv(65536)
            if not chunk:
                raise NotRunning(f"the daemon at {path} closed the connection")
            buf += chunk
    except (FileNotFoundError, ConnectionRefusedError) as e:
        raise NotRunning(f"magnusd is not running (no answer on {path}: {e.strerror})") from None
    except TimeoutError:
        raise NotRunning(f"magnusd did not answer on {path} within {timeout} s") from None
    finally:
        s.close()


def cmd_status(args: argparse.Namespace) -> int:
    st = request_status(settings_of(args).socket)
    if args.json:
        print(_json(st))
        return 0
    cfg = st["config"]
    print(f"magnusd pid {st['pid']}, up {st['uptime_s']:.0f} s, {st['clients']} client(s), "
          f"{st['events_total']} events this run")
    print(f"  socket   {st['socket']}\n  data     {st['data_dir']}")
    print(f"  journal  seq {st['journal']['last_seq']} (durable {st['journal']['durable_seq']}), "
          f"{st['journal']['segments']} segment(s), {st['journal']['bytes']} bytes")
    print(f"  config   {cfg['path']}" + (f"  ERROR: {cfg['error']}" if cfg["error"] else ""))
    for t in st["trackers"]:
        print(f"  tracker  {t['name']} ({t['type']}): {t['state']}, pending {t['pending']}, "
              f"delivered {t['delivered']}, errors {t['errors']}"
              + (f", last error: {t['last_error']}" if t.get("last_error") else ""))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from ._runlog import list_runs

    runs = list_runs(settings_of(args).data_dir, args.tag)
    if args.json:
        print(_json(runs))
        return 0
    if not runs:
        print("no runs")
    for r in runs:
        print(f"{r['run_id']}\t{r['tag'] or '-'}\t{r['status']}\t{len(r['steps'])} step(s)\t"
              f"{r['updated'] or ''}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from ._runlog import load_run

    data_dir = settings_of(args).data_dir
    if args.plot:
        from ._terminal import plot

        print(plot(data_dir, args.run_id, args.plot, args.step_name))
        return 0
    run = load_run(data_dir, args.run_id)
    if run is None:
        raise MagnusdError(f"no run {args.run_id!r} in {data_dir} (see `magnusd runs`)")
    if args.json:
        print(_json(run))
        return 0
    print(f"run {run.run_id}  tag {run.tag or '-'}  {run.status}")
    for st in run.steps.values():
        m = st.user_defined_metrics
        print(f"  step {st.name}: {st.status}, {len(st.attempts)} attempt(s), "
              f"{len(m)} metric(s)")
        for k in list(m)[:20]:
            print(f"    {k} = {_json(m[k])}")
        if len(m) > 20:
            print(f"    ... {len(m) - 20} more (--json for all)")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from . import _config

    path = args.path or settings_of(args).config
    if not os.path.exists(path):
        raise MagnusdError(f"{path}: no such file")
    from ._trackers import validate

    try:
        cfg = _config.load(path, os.environ)
        problems = [r.error for r in validate(cfg, _config.read_text(path) or "") if r.error]
    except _config.ConfigError as e:
        problems = e.problems
    for p in problems:
        print(f"{path}: {p}", file=sys.stderr)
    if problems:
        return 1
    names = ", ".join(f"{t.key} ({t.type})" for t in cfg.trackers) or "none"
    print(f"{path}: valid; trackers: {names}")
    return 0


def cmd_install_units(args: argparse.Namespace) -> int:
    from ._units import install

    try:
        print(install(args.scope or "user", args.dry_run, args.target), end="")
    except PermissionError as e:
        raise MagnusdError(f"cannot write the units: {e} (the system units need root)") from None
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from ._terminal import ui_url

    settings = settings_of(args)
    url = ui_url(settings, request_status(settings.socket))
    if not args.print_url:
        import webbrowser

        webbrowser.open(url)
    print(url)
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from ._terminal import tail

    return tail(settings_of(args), args.run, args.tag, args.key)


def cmd_compare(args: argparse.Namespace) -> int:
    from ._terminal import compare_table

    print(compare_table(settings_of(args).data_dir, args.run_ids))
    return 0
