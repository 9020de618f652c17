"""The SDK runtime: the call-site buffer, the background flusher, delivery and the spool.

`track_this` appends one tuple to a module-level list and returns. A flusher thread (started on
first use) drains that list every few milliseconds, encodes batches, and sends them to the
daemon. Every sent message stays in `unacked` until the daemon acknowledges it as durable
(journaled and fsynced); after a broken connection the unacked messages are sent again, and the
daemon drops what it had already journaled (it remembers the last `seq` per `client_id`).

When the daemon is unreachable, messages wait in memory (bounded) and are written to a spool file
when the bound is reached, when `flush()` needs durability, and at exit; the daemon ingests spool
files. After spooling, the client takes a new `client_id`, so each id's messages reach the
journal as one in-order stream and the daemon's last-seq check stays exact.

Locks are never held across I/O, so `os.fork()` can always take them (`register_at_fork`).
"""

from __future__ import annotations

import os
import sys
import threading
import time

from ._paths import socket_path, spool_dir

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing, socket and select cost milliseconds: never on `import magnus`
    import socket
    from typing import Any

FLUSH_INTERVAL = 0.02  # s between flusher cycles
MAX_BUFFER = 2_000_000  # entries waiting for the flusher; beyond it calls are counted as dropped
SPOOL_AFTER_RECORDS = 250_000  # undelivered records kept in memory while disconnected
BATCH_RECORDS = 8192
CONNECT_TIMEOUT = 2.0
SEND_TIMEOUT = 10.0
BACKOFF_MIN, BACKOFF_MAX = 0.05, 2.0
DEFAULT_STEP = "main"

# The call-site buffer: (step, unix time, {key: value}) tuples and `Mark`s. Module level so
# `track_this` reaches it with one global lookup.
buffer: list[Any] = []


class Ctx:
    """Identity of the records that follow it in the buffer."""

    __slots__ = ("run_id", "tag", "step_name", "explicit")

    def __init__(self, run_id: str, tag: str, step_name: str, explicit: bool) -> None:
        self.run_id, self.tag, self.step_name, self.explicit = run_id, tag, step_name, explicit


class Mark:
    """A non-metric entry in the buffer: step start/end or environment metrics."""

    __slots__ = ("kind", "ctx", "after", "status", "ts", "metrics")

    def __init__(self, kind: str, ctx: Ctx, after: Ctx, status: str = "",
                 metrics: dict[str, Any] | None = None) -> None:
        self.kind, self.ctx, self.after, self.status = kind, ctx, after, status
        self.ts = time.time()
        self.metrics = metrics


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + os.urandom(3).hex()


def env_metrics(environ: Any) -> dict[str, Any]:
    """`MAGNUS_TRACK_<key>` variables, values parsed as JSON with the raw string as fallback."""
    import json

    out: dict[str, Any] = {}
    for name, raw in list(environ.items()):
        if name.startswith("MAGNUS_TRACK_") and len(name) > 13:
            try:
                out[name[13:]] = json.loads(raw)
            except ValueError:
                out[name[13:]] = raw
    return out


class Client:
    def __init__(self) -> None:
        self._init_process_state()
        self.at_exit_registered = False
        self.mp_registered = False

    def _init_process_state(self) -> None:
        """Everything that belongs to one process (re-run in a forked child)."""
        self.lock = threading.Lock()  # guards the fields below; never held across I/O
        self.cond = threading.Condition(self.lock)
        self.enc_lock = threading.Lock()  # one encoder at a time (flusher or flush())
        self.client_id = os.urandom(8).hex()
        self.seq = 0  # last seq assigned
        self.done_seq = 0  # every seq <= this is durable (acked or spooled)
        self.unacked: list[tuple[int, bytes, int]] = []  # (seq, frame, n records), by seq
        self.unacked_records = 0
        self.sent_seq = 0  # last seq written to the current connection
        self.sock: socket.socket | None = None
        self.rbuf = bytearray()
        self.next_connect = 0.0
        self.backoff = BACKOFF_MIN
        self.flush_req = 0  # generation counters: flush() asks, the flusher answers
        self.flush_seen = 0
        self.spool_req = False
        self.thread: threading.Thread | None = None
        self.wake_r = self.wake_w = -1
        self.ctx: Ctx | None = None  # identity in effect at the buffer's head
        self.cur: Ctx | None = None  # identity in effect at the call site
        self.implicit_started: set[tuple[str, str]] = set()
        self.marks_added = self.marks_seen = 0
        self.dropped = 0
        self.spooled_files = 0
        self.uncaught = False
        self.last_error = ""
        self.paths: tuple[str, str] | None = None  # (socket, spool directory), resolved once

    # -- identity -------------------------------------------------------------------------

    def current(self) -> Ctx:
        if self.cur is None:
            env = os.environ
            run_id = env.get("MAGNUS_RUN_ID") or ""
            if not run_id:
                run_id = env["MAGNUS_RUN_ID"] = new_run_id()
            self.cur = Ctx(run_id, env.get("MAGNUS_RUN_TAG", ""),
                           env.get("MAGNUS_STEP_NAME") or DEFAULT_STEP, False)
            if self.ctx is None:
                self.ctx = self.cur
        return self.cur

    def add_mark(self, mark: Mark) -> None:
        with self.lock:
            buffer.append(mark)
            self.marks_added += 1
            self.cur = mark.after

    # -- start-up ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the flusher (idempotent); called on first use in each process."""
        with self.lock:
            if self.thread is not None:
                return
            self.current()
            self.wake_r, self.wake_w = os.pipe()
            os.set_blocking(self.wake_w, False)
            self.thread = threading.Thread(target=self._run, name="magnus-flusher", daemon=True)
            self.thread.start()
        if not self.at_exit_registered:
            self.at_exit_registered = True
            import atexit

            atexit.register(self.at_exit)
            prev_hook = sys.excepthook

            def hook(*args: Any) -> None:
                self.uncaught = True
                prev_hook(*args)

            sys.excepthook = hook

    def wake(self) -> None:
        try:
            os.write(self.wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending

    # -- the flusher ------------------------------------------------------------------------

    def warm(self) -> None:
        """Do the flusher's imports and path look-ups (msgspec, platformdirs: slow)."""
        import select  # noqa: F401
        import socket  # noqa: F401

        _proto()
        if not self.paths:
            self.paths = (socket_path(os.environ), spool_dir(os.environ))

    def _run(self) -> None:
        import select

        self.warm()  # off the caller's path
        while True:
            rlist: list[Any] = [self.wake_r] if self.sock is None else [self.wake_r, self.sock]
            try:
                ready, _, _ = select.select(rlist, [], [], FLUSH_INTERVAL)
            except (OSError, ValueError):
                ready = []
            if self.wake_r in ready:
                try:
                    os.read(self.wake_r, 4096)
                except OSError:
                    pass
            if self.sock is not None and self.sock in ready:
                self._read()
            try:
                self._cycle()
            except Exception as e:  # never let the flusher die
                self._warn(f"flusher error: {e!r}")
                self._disconnect()

    def _cycle(self) -> None:
        with self.enc_lock:
            self._encode_pending()
        with self.lock:
            flushing = self.flush_req != self.flush_seen
            self.flush_seen = self.flush_req
            spool_now = self.spool_req
            self.spool_req = False
            pending = bool(self.unacked)
        if spool_now:
            self._spool()
            return
        if not pending:
            return
        if self.sock is None and (flushing or time.monotonic() >= self.next_connect):
            self._connect()
        if self.sock is not None:
            self._send(urgent=flushing)
        elif flushing or self.unacked_records > SPOOL_AFTER_RECORDS:
            self._spool()

    def _encode_pending(self) -> None:
        """Move the call-site buffer into encoded, seq-numbered frames (caller holds enc_lock)."""
        n = len(buffer)
        if not n:
            return
        items = buffer[:n]
        del buffer[:n]
        ctx = self.ctx or self.current()
        frames: list[tuple[int, bytes, int]] = []
        if self.marks_added == self.marks_seen:
            self._encode_records(ctx, items, frames)
        else:
            start = 0
            for i, e in enumerate(items):
                if type(e) is Mark:
                    self.marks_seen += 1
                    self._encode_records(ctx, items[start:i], frames)
                    frames.append(self._encode_mark(e))
                    ctx = e.after
                    start = i + 1
            self._encode_records(ctx, items[start:], frames)
        self.ctx = ctx
        with self.lock:
            self.unacked.extend(frames)
            self.unacked_records += sum(f[2] for f in frames)

    def _encode_records(self, ctx: Ctx, recs: list[Any], out: list[tuple[int, bytes, int]]) -> None:
        if not recs:
            return
        if not ctx.explicit and (ctx.run_id, ctx.step_name) not in self.implicit_started:
            self.implicit_started.add((ctx.run_id, ctx.step_name))
            out.append(self._encode_mark(Mark("start", ctx, ctx)))
        for i in range(0, len(recs), BATCH_RECORDS):
            self._encode_batch(ctx, recs[i : i + BATCH_RECORDS], True, out)

    def _encode_batch(self, ctx: Ctx, recs: list[Any], track: bool,
                      out: list[tuple[int, bytes, int]]) -> None:
        proto = _proto()
        seq = self.seq + 1
        first = recs[0][2]
        key = next(iter(first)) if len(first) == 1 else None
        if track and key is not None and all(len(m) == 1 and key in m for _, _, m in recs):
            # one key in every call: the columnar form, several times cheaper to validate
            msg = proto.Batch(self.client_id, seq, ctx.run_id, ctx.tag, ctx.step_name, [],
                              track, [key], [r[0] for r in recs], [r[1] for r in recs],
                              [r[2][key] for r in recs])
        else:
            msg = proto.Batch(self.client_id, seq, ctx.run_id, ctx.tag, ctx.step_name, recs,
                              track)
        try:
            payload = proto.encoder.encode(msg)
        except (TypeError, ValueError, OverflowError) as e:  # validated at the call site
            self._warn(f"could not encode {len(recs)} records: {e}")
            with self.lock:
                self.dropped += len(recs)
            return
        if len(payload) > proto.MAX_FRAME:
            if len(recs) == 1:
                self._warn("a record exceeds the maximum frame size and was dropped")
                with self.lock:
                    self.dropped += 1
                return
            half = len(recs) // 2
            self._encode_batch(ctx, recs[:half], track, out)
            self._encode_batch(ctx, recs[half:], track, out)
            return
        self.seq = seq
        out.append((seq, len(payload).to_bytes(4, "big") + payload, len(recs)))

    def _encode_mark(self, m: Mark) -> tuple[int, bytes, int]:
        proto = _proto()
        c = m.ctx
        self.seq += 1
        if m.kind == "env":
            msg: Any = proto.Batch(self.client_id, self.seq, c.run_id, c.tag, c.step_name,
                                   [(0, m.ts, m.metrics)], False)
        else:
            msg = proto.StepMark(self.client_id, self.seq, c.run_id, c.tag, c.step_name, m.kind,
                                 m.ts, m.status)
        return (self.seq, proto.frame(msg), 1)

    # -- connection -------------------------------------------------------------------------

    def _connect(self) -> None:
        import socket

        proto = _proto()
        assert self.paths is not None  # warm() ran first
        path = self.paths[0]
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(CONNECT_TIMEOUT)
            s.connect(path)
            s.sendall(proto.frame(proto.Hello(proto.PROTOCOL_VERSION, self.client_id, os.getpid())))
            self.rbuf = bytearray()
            reply = self._read_one(s, self.rbuf)
            if not isinstance(reply, proto.Welcome):
                msg = reply.message if isinstance(reply, proto.Error) else repr(reply)
                self._warn(f"daemon at {path} refused the connection: {msg}")
                raise ConnectionError(msg)
            s.settimeout(SEND_TIMEOUT)
        except (OSError, ValueError) as e:
            s.close()
            self.last_error = str(e)
            now = time.monotonic()
            self.next_connect = now + self.backoff * (0.5 + (os.urandom(1)[0] / 255))
            self.backoff = min(self.backoff * 2, BACKOFF_MAX)
            return
        self.sock = s
        self.sent_seq = 0
        self.backoff = BACKOFF_MIN

    @staticmethod
    def _read_one(s: socket.socket, buf: bytearray) -> Any:
        """The next message on a blocking socket; `buf` keeps what was read beyond it."""
        while True:
            frames, used, error = _proto().split_frames(buf, max_frame=_proto().MAX_FRAME)
            if error:
                raise ConnectionError(f"bad frame from daemon: {error}")
            if frames:
                n = len(frames[0]) + 4
                del buf[:n]
                return _proto().decoder.decode(frames[0])
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("daemon closed the connection")
            buf += chunk

    def _disconnect(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.rbuf = bytearray()
        self.sent_seq = 0
        self.next_connect = time.monotonic() + self.backoff

    def _send(self, urgent: bool) -> None:
        proto = _proto()
        assert self.sock is not None
        with self.lock:
            todo = [(seq, f) for seq, f, _ in self.unacked if seq > self.sent_seq]
        if not todo and not urgent:
            return
        parts = [f for _, f in todo]
        last = todo[-1][0] if todo else self.sent_seq
        parts.append(proto.frame(proto.Sync(last, urgent)))
        try:
            self.sock.sendall(b"".join(parts))
        except OSError as e:
            self.last_error = str(e)
            self._disconnect()
            return
        self.sent_seq = last

    def _read(self) -> None:
        proto = _proto()
        assert self.sock is not None
        try:
            chunk = self.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.last_error = str(e)
            self._disconnect()
            return
        if not chunk:
            self.last_error = "daemon closed the connection"
            self._disconnect()
            return
        self.rbuf += chunk
        frames, used, error = proto.split_frames(self.rbuf)
        if error:
            self._warn(f"bad frame from daemon: {error}")
            self._disconnect()
            return
        del self.rbuf[:used]
        acked = 0
        for f in frames:
            msg = proto.decoder.decode(f)
            if isinstance(msg, proto.Ack):
                acked = max(acked, msg.seq)
            elif isinstance(msg, proto.Error):
                self._warn(f"daemon error: {msg.message}")
        if acked:
            self._mark_done(acked)

    def _mark_done(self, upto: int) -> None:
        with self.cond:
            k = 0
            for seq, _, nrec in self.unacked:
                if seq > upto:
                    break
                k += 1
                self.unacked_records -= nrec
            del self.unacked[:k]
            if upto > self.done_seq:
                self.done_seq = upto
            self.cond.notify_all()

    # -- spool ------------------------------------------------------------------------------

    def _spool(self) -> None:
        """Write every undelivered message to a spool file, then continue under a new id."""
        self._disconnect()
        # Under enc_lock no frame can be encoded with the old id after this snapshot.
        with self.enc_lock, self.lock:
            todo = list(self.unacked)
            old_id = self.client_id
            self.client_id = os.urandom(8).hex()
        if not todo:
            return
        data = b"".join(f for _, f, _ in todo)
        assert self.paths is not None  # warm() ran first
        directory = self.paths[1]
        name = f"{old_id}-{todo[0][0]}"
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            tmp = os.path.join(directory, f".{name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, os.path.join(directory, name + ".spool"))
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            self._warn(f"could not write spool file in {directory}: {e}; events stay in memory")
            return
        with self.lock:
            self.spooled_files += 1
        self._mark_done(todo[-1][0])

    def ask_context(self) -> Any:
        """One request/reply with the daemon for the active tracker; None when unreachable."""
        import socket

        proto = _proto()
        self.start()
        self.warm()
        assert self.paths is not None
        cur = self.current()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(CONNECT_TIMEOUT)
            s.connect(self.paths[0])
            s.sendall(proto.frame(proto.Hello(proto.PROTOCOL_VERSION, os.urandom(8).hex(),
                                              os.getpid()))
                      + proto.frame(proto.ContextRequest(cur.run_id, cur.tag, cur.step_name)))
            s.settimeout(30.0)  # the tracker may create its run first
            buf = bytearray()
            while True:
                msg = self._read_one(s, buf)
                if isinstance(msg, proto.ContextReply):
                    return msg
                if isinstance(msg, proto.Error):
                    self._warn(f"daemon refused the tracker context request: {msg.message}")
                    return None
        except (OSError, ValueError) as e:
            self._warn(f"no tracker context (daemon unreachable: {e})")
            return None
        finally:
            s.close()

    # -- flush and exit ---------------------------------------------------------------------

    def flush(self, timeout: float | None) -> bool:
        self.start()
        env = env_metrics(os.environ)
        if env:
            self.add_mark(Mark("env", self.current(), self.current(), metrics=env))
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.enc_lock:
            self._encode_pending()
        with self.cond:
            target = self.seq
            self.flush_req += 1
        self.wake()
        with self.cond:
            while self.done_seq < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self.cond.wait(0.5 if remaining is None else min(remaining, 0.5))
        return True

    def at_exit(self) -> None:
        if self.thread is None:
            return
        status = "FAIL" if self.uncaught else "SUCCESS"
        with self.enc_lock:
            self._encode_pending()  # notes the implicit steps this process used
        cur = self.current()
        for run_id, step_name in sorted(self.implicit_started):
            ctx = Ctx(run_id, cur.tag, step_name, False)
            self.add_mark(Mark("end", ctx, cur, status))
        timeout = float(os.environ.get("MAGNUS_EXIT_TIMEOUT", "5"))
        if not self.flush(timeout):
            with self.cond:
                self.spool_req = True
            self.wake()
            with self.cond:
                target = self.seq
                done = self.cond.wait_for(lambda: self.done_seq >= target, timeout=2.0)
            if not done:  # the flusher is stuck in I/O (a hung daemon): spool from here
                self._spool()
        if self.dropped:
            self._warn(f"{self.dropped} events were dropped (buffer full)")

    def _warn(self, msg: str) -> None:
        try:
            sys.stderr.write(f"magnus: {msg}\n")
        except Exception:  # stderr may be closed at exit
            pass

    # -- fork -------------------------------------------------------------------------------

    def before_fork(self) -> None:
        if self.thread is not None:
            self.current()  # a generated run id must be in os.environ before the child exists
            # Finish the flusher's lazy imports here: a child forked while another thread holds
            # an import lock would deadlock on its first use of the module.
            self.warm()
        mp = sys.modules.get("multiprocessing.util")
        if mp is not None and not self.mp_registered:
            self.mp_registered = True
            mp.register_after_fork(self, Client._mp_child)
        self.enc_lock.acquire()
        self.lock.acquire()

    def after_fork_parent(self) -> None:
        self.lock.release()
        self.enc_lock.release()

    def after_fork_child(self) -> None:
        sock, wake_r, wake_w, ctx, cur = self.sock, self.wake_r, self.wake_w, self.ctx, self.cur
        paths = self.paths
        self._init_process_state()
        self.paths = paths
        if sock is not None:
            try:
                os.close(sock.detach())  # the parent's connection: close our fd, not the stream
            except OSError:
                pass
        for fd in (wake_r, wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        del buffer[:]  # the parent delivers its own buffer
        self.ctx = self.cur = cur if cur is not None else ctx

    @staticmethod
    def _mp_child(self: Client) -> None:
        # multiprocessing children leave through os._exit, skipping atexit: flush from its
        # finalizers instead (registered after multiprocessing clears the inherited ones).
        import multiprocessing.util as mpu

        mpu.Finalize(None, self.at_exit, exitpriority=100)


_PROTO: Any = None


def _proto() -> Any:
    global _PROTO
    if _PROTO is None:
        from . import _protocol

        _PROTO = _protocol
    return _PROTO


CLIENT = Client()
os.register_at_fork(before=CLIENT.before_fork, after_in_parent=CLIENT.after_fork_parent,
                    after_in_child=CLIENT.after_fork_child)
