"""A small TCP proxy between syncd and Postgres that can reset, stall and refuse
connections, for fault injection. Runs on its own thread."""

from __future__ import annotations

import socket
import struct
import threading
import time
from contextlib import suppress


class FaultProxy:
    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.mode = "pass"  # pass | stall | refuse
        self._lock = threading.Lock()
        self._conns: list[tuple[socket.socket, socket.socket]] = []
        self._stalled = threading.Event()
        self._stalled.set()  # set = flowing
        self._closed = False
        self._lose: tuple[bytes, bytes, bool] | None = None
        self.reply_lost = threading.Event()
        self._fail: tuple[bytes, bytes] | None = None
        self.reply_failed = threading.Event()
        self.bytes_up = 0  # bytes passed on towards Postgres, every connection together
        self.refused = 0  # connections refused (while refuse() holds): the client's tries
        self.accepted = 0  # connections accepted (stalled ones too): the client's tries
        self.accept_left: int | None = None  # new connections still let through (None: no limit)
        threading.Thread(target=self._accept_loop, daemon=True).start()

    # --- control -------------------------------------------------------------------

    def reset(self) -> None:
        """Abort every open connection with a TCP RST."""
        with self._lock:
            conns, self._conns = self._conns, []
        for a, b in conns:
            for s in (a, b):
                with suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                with suppress(OSError):
                    # Wakes the pump blocked in recv() on it: a close() alone leaves the socket
                    # open while that call holds it, and Postgres's session alive behind it.
                    s.shutdown(socket.SHUT_RDWR)
                with suppress(OSError):
                    s.close()

    def stall(self) -> None:
        """Keep connections open but stop moving bytes; new connections hang too."""
        self.mode = "stall"
        self._stalled.clear()

    def refuse(self) -> None:
        """Reset existing connections and refuse new ones."""
        self.mode = "refuse"
        self._stalled.set()
        self.reset()

    def lose_reply_after(self, trigger: bytes, then: bytes = b"COMMIT", refuse_after: bool = False) -> None:
        """On the first connection that sends `trigger`: pass its next message holding
        `then` on to Postgres, let Postgres act on it, and reset the connection before
        the reply comes back (a commit whose reply is lost). With `refuse_after`, new
        connections are refused from then on. `reply_lost` is set once it happened."""
        self._lose = (trigger, then, refuse_after)

    def fail_reply_to(self, trigger: bytes, fields: dict[str, str]) -> None:
        """On the first connection that sends `trigger` (a simple query, or the Parse of a
        statement prepared): let Postgres act on it, and hand the client an ErrorResponse
        of `fields` (code letter -> value, as Postgres sends them) in the reply's place, a
        simple query's transaction marked failed. `reply_failed` is set once it happened."""
        body = b"".join(k.encode() + v.encode() + b"\0" for k, v in fields.items()) + b"\0"
        self._fail = (trigger, b"E" + struct.pack("!i", len(body) + 4) + body)

    def refuse_new_after(self, n: int) -> None:
        """Keep the open connections, let `n` new ones through, refuse the rest (a
        CONNECTION LIMIT with `n` slots left)."""
        self.accept_left = n

    def heal(self) -> None:
        self.mode = "pass"
        self.accept_left = None
        self._stalled.set()

    def close(self) -> None:
        self._closed = True
        self.heal()
        with suppress(OSError):
            self.listener.close()
        self.reset()

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._conns)

    # --- plumbing ------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.mode == "refuse" or self.accept_left == 0:
                self.refused += 1
                with suppress(OSError):
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    client.close()
                continue
            self.accepted += 1
            if self.accept_left is not None:
                self.accept_left -= 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self._stalled.wait()
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            with suppress(OSError):
                client.close()
            return
        with self._lock:
            self._conns.append((client, upstream))
        state = {"armed": False, "cut": False}
        threading.Thread(target=self._pump, args=(client, upstream, state, True), daemon=True).start()
        self._pump(upstream, client, state, False)

    def _replace_reply(self, state: dict, data: bytes) -> bytes:
        """Postgres's messages in `data`, held back up to the end of the reply (a simple
        query's ReadyForQuery, a prepare's row description), which goes out as the
        ErrorResponse of fail_reply_to; what follows it passes (the client syncs after
        a prepare's error, and the ReadyForQuery it gets then is Postgres's)."""
        buf = state["fail"] + data
        at = 0
        while len(buf) - at >= 5:
            kind, size = buf[at:at + 1], struct.unpack("!i", buf[at + 1:at + 5])[0]
            if len(buf) - at < 1 + size:
                break
            at += 1 + size
            if kind == b"Z" and state["fail_kind"] == b"Q":
                del state["fail"]
                return self._fail[1] + b"Z" + struct.pack("!i", 5) + b"E" + buf[at:]
            if kind in (b"T", b"n") and state["fail_kind"] != b"Q":
                del state["fail"]
                return self._fail[1] + buf[at:]
        state["fail"] = buf[at:]
        return b""

    def _pump(self, src: socket.socket, dst: socket.socket, state: dict, upward: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._stalled.wait()
                if state["cut"]:
                    break  # the reply that is lost
                if upward and self._fail is not None and not self.reply_failed.is_set() and self._fail[0] in data:
                    self.reply_failed.set()
                    state["fail"] = b""  # the reply to come is replaced
                    state["fail_kind"] = data[:1]  # Q: a simple query's; else a prepare's (ends at its Describe)
                if not upward and "fail" in state:
                    data = self._replace_reply(state, data)
                if upward and self._lose is not None and not self.reply_lost.is_set():
                    trigger, then, refuse_after = self._lose
                    state["armed"] = state["armed"] or trigger in data
                    if state["armed"] and then in data:
                        state["cut"] = True  # the other direction passes nothing from now on
                        if refuse_after:
                            self.mode = "refuse"
                        self.reply_lost.set()
                        dst.sendall(data)
                        time.sleep(0.5)  # Postgres acts on it meanwhile
                        for s in (src, dst):
                            with suppress(OSError):
                                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                                s.close()
                        return
                dst.sendall(data)
                if upward:
                    self.bytes_up += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
