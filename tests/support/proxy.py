"""A small TCP proxy between syncd and Postgres that can reset, stall and refuse
connections, for fault injection. Runs on its own thread."""

from __future__ import annotations

import socket
import struct
import threading
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

    def heal(self) -> None:
        self.mode = "pass"
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
            if self.mode == "refuse":
                with suppress(OSError):
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    client.close()
                continue
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
        threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
        self._pump(upstream, client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._stalled.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
