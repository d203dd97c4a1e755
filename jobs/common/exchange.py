"""All-gather among the tasks of a Spark barrier job, fast enough to call every iteration.

Spark's own ``BarrierTaskContext.allGather`` waits for its reply by sleeping a whole second at a
time (Spark 4.0), so each call costs about a second whatever its size. :class:`Exchange` calls
it once, to share the first task's address and a random token, and then gathers over plain TCP
through the first task: each task sends it its bytes, and it sends every task all of them, in
partition order. A connection that does not open with the token is dropped. A task that dies
fails the barrier stage, and Spark then stops the others, which closes their sockets.

Example, inside ``rdd.barrier().mapPartitions(f)``::

    with Exchange(BarrierTaskContext.get()) as ex:
        parts = ex.gather(my_bytes)     # every task's bytes, in partition order
"""
from __future__ import annotations

import json
import secrets
import socket
import struct

_LENGTH = struct.Struct("!Q")


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_LENGTH.pack(len(payload)) + payload)


def _receive(sock: socket.socket) -> bytes:
    size = _LENGTH.unpack(_exactly(sock, _LENGTH.size))[0]
    return _exactly(sock, size)


def _exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        got = sock.recv(min(left, 1 << 20))
        if not got:
            raise ConnectionError("a task of the barrier job closed its connection")
        chunks.append(got)
        left -= len(got)
    return b"".join(chunks)


class Exchange:
    """See the module's docstring. ``gathers`` counts the calls to :meth:`gather`."""

    def __init__(self, ctx, timeout_s: float = 600.0):
        """``timeout_s`` bounds the handshake only: once connected a pass may take as long as
        it takes (a task that fails fails the stage, and Spark stops the others)."""
        self.rank = ctx.partitionId()
        infos = ctx.getTaskInfos()
        self.size = len(infos)
        self.gathers = 0
        self._peers: list[socket.socket] = []
        self._server = None
        token = secrets.token_hex(16)
        if self.rank == 0:
            self._server = socket.create_server(("", 0))
            self._server.settimeout(timeout_s)
            host = infos[0].address.rsplit(":", 1)[0]
            mine = json.dumps({"host": host, "port": self._server.getsockname()[1],
                               "token": token})
        else:
            mine = ""
        first = json.loads(ctx.allGather(mine)[0])
        if self.rank == 0:
            peers: dict[int, socket.socket] = {}
            while len(peers) < self.size - 1:
                conn, _ = self._server.accept()
                conn.settimeout(timeout_s)
                hello = json.loads(_receive(conn))
                if hello.get("token") != token:
                    conn.close()
                    continue
                peers[int(hello["rank"])] = conn
            self._peers = [peers[r] for r in range(1, self.size)]
        else:
            conn = socket.create_connection((first["host"], first["port"]), timeout=timeout_s)
            _send(conn, json.dumps({"token": first["token"], "rank": self.rank}).encode())
            self._peers = [conn]
        for peer in self._peers:
            peer.settimeout(None)

    def gather(self, payload: bytes) -> list[bytes]:
        """Every task's ``payload``, in partition order (each task calls it the same number of
        times)."""
        self.gathers += 1
        if self.size == 1:
            return [payload]
        try:
            return self._gather(payload)
        except (ConnectionError, OSError) as err:
            raise ConnectionError(
                f"the barrier job's task {self.rank} lost its exchange ({err}): another task "
                "failed or stopped early (executors whose arithmetic differs stop at different "
                "iterations)") from err

    def _gather(self, payload: bytes) -> list[bytes]:
        if self.rank != 0:
            _send(self._peers[0], payload)
            blob = _receive(self._peers[0])
            out, at = [], 0
            while at < len(blob):
                size = _LENGTH.unpack_from(blob, at)[0]
                out.append(blob[at + _LENGTH.size:at + _LENGTH.size + size])
                at += _LENGTH.size + size
            return out
        parts = [payload] + [_receive(peer) for peer in self._peers]
        blob = b"".join(_LENGTH.pack(len(p)) + p for p in parts)
        for peer in self._peers:
            _send(peer, blob)
        return parts

    def close(self) -> None:
        for peer in self._peers:
            peer.close()
        if self._server is not None:
            self._server.close()

    def __enter__(self) -> "Exchange":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
