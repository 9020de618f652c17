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

Attempts (design §7): one process running one step. An explicit `step()` is an attempt of its
own; the implicit step (`MAGNUS_STEP_NAME`, else "main") becomes one when this process first
records into it. Forked and multiprocessing children work inside their parent's step and open
no implicit attempt (a pool that terminates its idle workers must not fail the run); the parent
opens its implicit attempt before it forks. Attempt ids are made here, never from the
connection or client id, so a restart, reconnect or spool never splits an attempt.

Locks are never held across I/O, so `os.fork()` can always take them (`register_at_fork`).
"""

from __future__ import annotations

import _thread
import atexit
import os
import sys
import time

from ._identity import (
    env_metrics,
    host_from,
    new_run_id,
    pid_namespace,
    process_start_ticks,
    rank_from,
    run_id_from,
)
from ._paths import socket_path, spool_dir

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing, socket and select cost milliseconds: never on `import magnus`
    import socket
    import threading
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
    """Identity of the records that follow it in the buffer (`attempt` empty when implicit)."""

    __slots__ = ("attempt", "explicit", "run_id", "step_name", "tag")

    def __init__(self, run_id: str, tag: str, step_name: str, explicit: bool,
                 attempt: str = "") -> None:
        self.run_id, self.tag, self.step_name, self.explicit = run_id, tag, step_name, explicit
        self.attempt = attempt


class Mark:
    """A non-metric entry in the buffer: step start/end, environment metrics, or "claim" (open
    the implicit attempt of `ctx` now: the process is about to fork)."""

    __slots__ = ("after", "ctx", "kind", "metrics", "status", "ts")

    def __init__(self, kind: str, ctx: Ctx, after: Ctx, status: str = "",
                 metrics: dict[str, Any] | None = None) -> None:
        self.kind, self.ctx, self.after, self.status = kind, ctx, after, status
        self.ts = time.time()
        self.metrics = metrics


class Proc:
    """This process as attempts name it (computed off the caller's path, again after fork)."""

    __slots__ = ("host", "pid", "pid_ns", "pid_start", "rank")

    def __init__(self, environ: Any) -> None:
        self.host = host_from(environ)
        self.pid = os.getpid()
        self.pid_start = process_start_ticks()
        self.pid_ns = pid_namespace()
        self.rank = rank_from(environ)


class Client:
    def __init__(self) -> None:
        self._init_process_state()
        self.env_sent: dict[str, Any] = {}  # environment metrics recorded, kept across fork
        self.child = False  # a forked child: works inside the parent's implicit attempt
        self.excepthook_set = False
        self.mp_registered = False

    def _init_process_state(self) -> None:
        """Everything that belongs to one process (re-run in a forked child)."""
        # `threading` (with functools and collections) costs milliseconds: plain locks here,
        # the Condition and the thread once the SDK is used
        self.lock = _thread.allocate_lock()  # guards the fields below; never held across I/O
        self._cond: threading.Condition | None = None
        self.enc_lock = _thread.allocate_lock()  # one encoder at a time (flusher or flush())
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
        # (run, step) → attempt id of the implicit attempt this process opened ("" = joined
        # its parent's)
        self.implicit_started: dict[tuple[str, str], str] = {}
        self.proc: Proc | None = None
        self.proc_token = os.urandom(4).hex()
        self.attempts = 0
        self.marks_added = self.marks_seen = 0
        self.dropped = 0
        self.spooled_files = 0
        self.uncaught = False
        self.last_error = ""
        self.paths: tuple[str, str] | None = None  # (socket, spool directory), resolved once
        # Where frames go instead of the daemon (magnus.testing): anything with
        # deliver(frames: list[bytes]); None is the daemon's socket (or the spool).
        self.transport: Any = None

    # -- identity -------------------------------------------------------------------------

    def current(self) -> Ctx:
        if self.cur is None:
            env = os.environ
            run_id = run_id_from(env)
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

    @property
    def cond(self) -> threading.Condition:
        """`lock` as a Condition (made on first use)."""
        if self._cond is None:
            import threading

            self._cond = threading.Condition(self.lock)
        return self._cond

    def new_attempt(self) -> str:
        with self.lock:
            self.attempts += 1
            return f"{os.getpid()}-{self.proc_token}-{self.attempts}"

    def unsent_env(self) -> dict[str, Any]:
        """`MAGNUS_TRACK_*` values this process (or its parent) has not recorded yet: each
        value is recorded once, into the step in effect when it is first seen."""
        env = env_metrics(os.environ)
        sent = self.env_sent
        return {k: v for k, v in env.items()
                if k not in sent or sent[k] != v or type(sent[k]) is not type(v)}

    def add_env_metrics(self, ctx: Ctx) -> None:
        with self.lock:
            new = self.unsent_env()
            self.env_sent.update(new)
        if new:
            self.add_mark(Mark("env", ctx, self.cur or ctx, metrics=new))

    # -- start-up ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the flusher (idempotent); called on first use in each process."""
        with self.lock:
            if self.thread is not None:
                return
            self.current()
            self.wake_r, self.wake_w = os.pipe()
            os.set_blocking(self.wake_w, False)
            import threading

            self.cond  # noqa: B018 - made here, before another thread can race for it
            self.thread = threading.Thread(target=self._run, name="magnus-flusher", daemon=True)
            self.thread.start()
        if not self.excepthook_set:
            self.excepthook_set = True
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
        if self.proc is None:
            self.proc = Proc(os.environ)
            mp = sys.modules.get("multiprocessing.process")
            if mp is not None and mp.parent_process() is not None and self.proc.rank is None:
                # a multiprocessing worker, whatever its start method (a rank, as under
                # torch.multiprocessing.spawn, has an attempt of its own)
                self.child = True

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
        if self.transport is not None:
            self._deliver_to(self.transport)
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
        if self.proc is None:
            self.warm()
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
                    self._encode_entry(e, frames)
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
        self._claim_implicit(ctx, out)
        for i in range(0, len(recs), BATCH_RECORDS):
            self._encode_batch(ctx, recs[i : i + BATCH_RECORDS], True, out)

    def _claim_implicit(self, ctx: Ctx, out: list[tuple[int, bytes, int]]) -> None:
        """Open this process's attempt of an implicit step on its first record there."""
        key = (ctx.run_id, ctx.step_name)
        if ctx.explicit or key in self.implicit_started:
            return
        if self.child:
            self.implicit_started[key] = ""  # inside the parent's attempt
            return
        own = Ctx(ctx.run_id, ctx.tag, ctx.step_name, False, self.new_attempt())
        self.implicit_started[key] = own.attempt
        out.append(self._encode_mark(Mark("start", own, ctx)))

    def _encode_batch(self, ctx: Ctx, recs: list[Any], track: bool,
                      out: list[tuple[int, bytes, int]]) -> None:
        proto = _proto()
        seq = self.seq + 1
        first = recs[0][2]
        key = next(iter(first)) if len(first) == 1 else None
        assert self.proc is not None  # warm() ran first
        if track and key is not None and all(len(m) == 1 and key in m for _, _, m in recs):
            # one key in every call: the columnar form, several times cheaper to validate
            msg = proto.Batch(self.client_id, seq, ctx.run_id, ctx.tag, ctx.step_name, [],
                              track, [key], [r[0] for r in recs], [r[1] for r in recs],
                              [r[2][key] for r in recs], self.proc.rank)
        else:
            msg = proto.Batch(self.client_id, seq, ctx.run_id, ctx.tag, ctx.step_name, recs,
                              track, rank=self.proc.rank)
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

    def _encode_entry(self, m: Mark, out: list[tuple[int, bytes, int]]) -> None:
        if m.kind in ("env", "claim"):
            self._claim_implicit(m.ctx, out)  # environment metrics need an attempt too
        if m.kind != "claim":
            out.append(self._encode_mark(m))

    def _encode_mark(self, m: Mark) -> tuple[int, bytes, int]:
        proto = _proto()
        c = m.ctx
        p = self.proc
        assert p is not None  # warm() ran first
        self.seq += 1
        if m.kind == "env":
            msg: Any = proto.Batch(self.client_id, self.seq, c.run_id, c.tag, c.step_name,
                                   [(0, m.ts, m.metrics)], False, rank=p.rank)
        else:
            msg = proto.StepMark(self.client_id, self.seq, c.run_id, c.tag, c.step_name, m.kind,
                                 m.ts, m.status, c.attempt, p.host, p.pid, p.pid_start, p.rank,
                                 pid_ns=p.pid_ns)
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
            frames, _, error = _proto().split_frames(buf, max_frame=_proto().MAX_FRAME)
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
            elif isinstance(msg, proto.Error) and msg.message != self.last_error:
                self.last_error = msg.message  # said once, not at every reconnect
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

    def _deliver_to(self, transport: Any) -> None:
        with self.lock:
            todo = list(self.unacked)
        if todo:
            transport.deliver([f for _, f, _ in todo])
            self._mark_done(todo[-1][0])

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
        if self.transport is not None:
            return None  # captured in memory (magnus.testing): no tracker
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
        self.add_env_metrics(self.current())
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
            if not self.unsent_env():
                return
            self.start()  # a process that only set MAGNUS_TRACK_* variables
        status = "FAIL" if self.uncaught else "SUCCESS"
        cur = self.current()
        self.add_env_metrics(cur)
        with self.enc_lock:
            self._encode_pending()  # opens the implicit attempts this process used
        for (run_id, step_name), attempt in sorted(self.implicit_started.items()):
            if attempt:
                ctx = Ctx(run_id, cur.tag, step_name, False, attempt)
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
            cur = self.current()  # a generated run id must be in os.environ before the child
            # Finish the flusher's lazy imports here: a child forked while another thread holds
            # an import lock would deadlock on its first use of the module.
            self.warm()
            if (not self.child and not cur.explicit
                    and (cur.run_id, cur.step_name) not in self.implicit_started):
                # the child works inside this process's implicit attempt: make sure it exists
                self.add_mark(Mark("claim", cur, cur))
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
        self.child = True
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
atexit.register(CLIENT.at_exit)  # also for a process that only sets MAGNUS_TRACK_* variables
os.register_at_fork(before=CLIENT.before_fork, after_in_parent=CLIENT.after_fork_parent,
                    after_in_child=CLIENT.after_fork_child)
