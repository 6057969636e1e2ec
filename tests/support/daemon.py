"""Run syncd as a real subprocess, the way systemd would."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]


def syncd_cmd(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "syncd", "--config", str(config), *args]


def run_cli(config: Path, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(syncd_cmd(config, *args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=str(config.parent))


@contextlib.contextmanager
def held_at(config: Path, verb: str, step: str, resume_on: Path | None = None,
            nohup: bool = False, args: tuple[str, ...] = ()) -> Iterator[subprocess.Popen]:
    """`syncd <verb>` (cutover or rollback) started and paused at `step` by its test hook
    (SYNCD_<VERB>_HOLD_AT), for a test to kill or interrupt there, or to let go on by
    creating `resume_on`; killed on the way out if still running. With `nohup`, started
    with SIGHUP ignored, as `nohup` starts a command; `args` follow the verb."""
    env = {**os.environ, f"SYNCD_{verb.upper()}_HOLD_AT": step}
    if resume_on is not None:
        env[f"SYNCD_{verb.upper()}_RESUME_ON"] = str(resume_on)
    ignore_hup = (lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)) if nohup else None
    proc = subprocess.Popen(syncd_cmd(config, verb, *args), stdout=subprocess.PIPE, text=True,
                            cwd=str(config.parent), env=env, preexec_fn=ignore_hup)
    try:
        line = proc.stdout.readline().strip()
        assert line == f"holding at {step}", line
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


class DaemonProcess:
    def __init__(self, config: Path, log_path: Path, env: dict | None = None, args: tuple[str, ...] = ()):
        self.config = config
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self._start = self._log.tell()  # a log path used before holds earlier daemons' lines too
        self.proc = subprocess.Popen(
            syncd_cmd(config, *args, "run"),
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=str(config.parent),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def own_log(self) -> str:
        """What this daemon wrote (log() holds earlier runs' lines as well when its file is reused)."""
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path, "rb") as f:
            f.seek(self._start)
            return f.read().decode(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_log(self, text: str, timeout: float = 30) -> None:
        wait_for(lambda: text in self.own_log(), timeout, f"log line {text!r}", self)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            # A signal during interpreter start-up (before Python runs syncd) kills by
            # default; tests are about stopping a daemon that has started.
            wait_for(lambda: "syncd running" in self.own_log() or not self.alive(), 30, "daemon start", None)
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> "DaemonProcess":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if not self._log.closed:
            self._log.close()


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident set size so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def wait_for(cond: Callable[[], object], timeout: float, what: str, daemon: DaemonProcess | None = None,
             interval: float = 0.1):
    """Poll until cond() is truthy (liveness bound only; timing is for bench/)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if daemon is not None and not daemon.alive():
            raise AssertionError(f"syncd exited ({daemon.proc.returncode}) while waiting for {what}:\n{daemon.log()[-4000:]}")
        if time.monotonic() > deadline:
            tail = daemon.log()[-4000:] if daemon else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")
        time.sleep(interval)


def interrupted_waiting(config: Path, verb: str, proxy) -> tuple[int, str, float]:
    """`syncd <verb>` started against a Postgres reached through `proxy` (stalled: it drops
    every packet), Ctrl-C once it waits there: (exit code, output, seconds from the Ctrl-C
    to its end)."""
    proc = subprocess.Popen(syncd_cmd(config, verb), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=str(config.parent))
    try:
        wait_for(lambda: proxy.accepted >= 1, 30, f"syncd {verb} waiting for Postgres")
        proc.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        out, _ = proc.communicate(timeout=30)
        return proc.returncode, out, time.monotonic() - interrupted
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
