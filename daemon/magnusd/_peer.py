"""Who is at the other end of a client socket: the process's credentials (SO_PEERCRED).

The kernel vouches for them, so they decide whether a uid may use the daemon. A socket that
cannot say (not a Unix socket, an old kernel) yields None: the caller decides what that means.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from anyio.abc import SocketAttribute, SocketStream

_UCRED = struct.Struct("3i")


@dataclass(frozen=True)
class Peer:
    """The client process at the other end of the socket (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int


def peer_of(stream: SocketStream) -> Peer | None:
    """The peer's credentials, via SO_PEERCRED."""
    sock = stream.extra(SocketAttribute.raw_socket)
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except (OSError, AttributeError):
        return None
    pid, uid, gid = _UCRED.unpack(raw)
    return Peer(pid, uid, gid)
