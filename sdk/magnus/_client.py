"""The process's SDK client: the call site's `Steps`, the `Flusher` thread, exit and fork.

`import magnus` loads only this, `_steps` and `_identity`: the flusher (with threading, msgspec,
sockets and platformdirs) is imported and started on first use. At exit the client closes the
implicit attempts this process opened (FAIL after an uncaught exception) and waits up to
`MAGNUS_EXIT_TIMEOUT` seconds for everything to be durable, spooling what is not. Around
`os.fork()` it holds every SDK lock (none is ever held across I/O, so that is always quick), and
a child starts afresh inside its parent's attempt; multiprocessing children, which leave by
`os._exit`, flush from multiprocessing's finalizers.
"""

import _thread
import atexit
import os
import sys

from ._steps import Ctx as Ctx
from ._steps import Mark as Mark
from ._steps import Steps, buffer

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds: never on `import magnus`
    from typing import Any

    from ._flusher import Flusher
    from ._transport import Transport


def warn(msg: str) -> None:
    try:
        sys.stderr.write(f"magnus: {msg}\n")
    except Exception:  # stderr may be closed at exit
        pass


class Client:
    def __init__(self) -> None:
        self.steps = Steps()
        self.flusher: Flusher | None = None
        self.start_lock = _thread.allocate_lock()
        self.dropped = 0  # calls refused because the buffer was full
        self.uncaught = False
        self.excepthook_set = False
        self.mp_registered = False

    def start(self) -> "Flusher":
        """The flusher, started on first use in each process."""
        f = self.flusher
        if f is not None:
            return f
        with self.start_lock:
            if self.flusher is None:
                from ._flusher import Flusher

                self.steps.current()  # the run id is in os.environ before anyone forks
                f = Flusher(self.steps, warn)
                f.thread.start()
                self.flusher = f
        if not self.excepthook_set:
            self.excepthook_set = True
            prev_hook = sys.excepthook

            def hook(*args: "Any") -> None:
                self.uncaught = True
                prev_hook(*args)

            sys.excepthook = hook
        assert self.flusher is not None
        return self.flusher

    # what callers and benchmarks read
    def current(self) -> Ctx:
        return self.steps.current()

    @property
    def transport(self) -> "Transport | None":
        return self.flusher.override if self.flusher is not None else None

    @transport.setter
    def transport(self, transport: "Transport | None") -> None:
        self.start().override = transport

    @property
    def spooled_files(self) -> int:
        return self.flusher.spooled_files if self.flusher is not None else 0

    @property
    def last_error(self) -> str:
        return self.flusher.last_error if self.flusher is not None else ""

    def flush(self, timeout: float | None) -> bool:
        f = self.start()
        self.steps.add_env_metrics(self.steps.current())
        return f.flush(timeout)

    def ask_context(self) -> "Any":
        """The active tracker's context reply from the daemon; None without one."""
        f = self.start()
        if f.override is not None:
            return None  # captured in memory (magnus.testing): no tracker
        f.warm()
        from ._transport import ask_context

        cur = self.steps.current()
        return ask_context(f.paths[0], cur.run_id, cur.tag, cur.step_name, warn)

    def forget_identity(self) -> None:
        """Read run id, tag and step from the environment again at the next record (what is
        pending keeps the identity it was tracked under)."""
        f = self.start()
        with f.enc_lock:
            f.encode_pending()
            with self.steps.lock:
                if not any(type(e) is Mark for e in buffer):
                    assert f.encoder is not None
                    self.steps.cur = f.encoder.head = None

    def at_exit(self) -> None:
        steps = self.steps
        if self.flusher is None and not steps.unsent_env():
            return  # nothing tracked (a process that only set MAGNUS_TRACK_* variables goes on)
        f = self.start()
        steps.add_env_metrics(steps.current())
        with f.enc_lock:
            f.encode_pending()  # opens the implicit attempts this process used
            ends = steps.end_marks("FAIL" if self.uncaught else "SUCCESS")
        for mark in ends:
            steps.add_mark(mark)
        if not f.flush(float(os.environ.get("MAGNUS_EXIT_TIMEOUT", "5"))):
            f.spool_now()
        if self.dropped:
            warn(f"{self.dropped} events were dropped (buffer full)")

    # -- fork -------------------------------------------------------------------------------

    def before_fork(self) -> None:
        f = self.flusher
        if f is not None:
            # Finish the flusher's lazy work here: a child forked while another thread holds
            # an import lock would deadlock on its first use of the module.
            f.warm()
            self.steps.claim_before_fork()
        mp = sys.modules.get("multiprocessing.util")
        if mp is not None and not self.mp_registered:
            self.mp_registered = True
            mp.register_after_fork(self, Client._mp_child)
        self.start_lock.acquire()
        if f is not None:
            f.enc_lock.acquire()
        self.steps.lock.acquire()
        if f is not None:
            f.cond.acquire()

    def after_fork_parent(self) -> None:
        f = self.flusher
        if f is not None:
            f.cond.release()
        self.steps.lock.release()
        if f is not None:
            f.enc_lock.release()
        self.start_lock.release()

    def after_fork_child(self) -> None:
        f, cur = self.flusher, self.steps.cur
        if f is not None:
            if f.encoder is not None and cur is None:
                cur = f.encoder.head
            sock = f.socket.sock if f.socket is not None else None
            if sock is not None:
                try:
                    os.close(sock.detach())  # the parent's connection: our fd, not the stream
                except OSError:
                    pass
            f.close_fds()
        self.flusher = None
        self.start_lock = _thread.allocate_lock()
        self.steps.reset()
        self.steps.child = True
        self.steps.cur = cur
        del buffer[:]  # the parent delivers its own buffer

    @staticmethod
    def _mp_child(self: "Client") -> None:
        # multiprocessing children leave through os._exit, skipping atexit: flush from its
        # finalizers instead (registered after multiprocessing clears the inherited ones).
        import multiprocessing.util as mpu

        mpu.Finalize(None, self.at_exit, exitpriority=100)


CLIENT = Client()
atexit.register(CLIENT.at_exit)
os.register_at_fork(before=CLIENT.before_fork, after_in_parent=CLIENT.after_fork_parent,
                    after_in_child=CLIENT.after_fork_child)
