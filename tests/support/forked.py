"""The suite's `python -m syncd ...` processes, forked from a process that has imported
syncd already instead of started from nothing.

Every test starts syncd as real processes: daemons, and commands such as `syncd verify`.
A new interpreter spent about a quarter of a second of CPU importing syncd and its
libraries before doing anything, over four thousand times a run: half of the suite's CPU.
Here one process per test worker (the "forker") imports syncd once; each
`subprocess.Popen([sys.executable, "-m", "syncd", ...])` of the tests is then a fork of
it that runs syncd's `__main__` as `python -m syncd` would, with the test's argv,
environment, working directory and standard streams.

The process a test gets is still a real child of the test's worker: its own pid, which
the test signals, kills with SIGKILL, reads in /proc and waits for through the same Popen
object (the forker forks twice and the worker is the children's subreaper, so the
process is re-parented to the worker at once). What differs from a fresh interpreter is
only what was done before syncd's code ran: the imports. Tests about the interpreter's
own start (what is imported, the environment Python reads at start: PYTHON*, locales)
get a fresh interpreter: a command line other than `-m syncd`, any PYTHON*/LC_*/LANG/TZ
variable that differs from the worker's, a preexec_fn, pass_fds, another user or group,
a umask or a shell all take subprocess's own path, as does everything while the forker
is not running."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
_ENV_AT_START = ("PYTHON", "LC_", "LANG", "TZ")  # read by the interpreter at its start

_original_execute_child = subprocess.Popen._execute_child
_forker: "Forker | None" = None
_popens: "weakref.WeakSet[subprocess.Popen]" = weakref.WeakSet()  # every Popen of this worker


class Forker:
    """The forking process of this test worker, and how to ask it for a child."""

    def __init__(self, directory: Path):
        self.path = str(directory / "forker.sock")
        self.env = dict(os.environ)
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from tests.support.forked import serve; serve(sys.argv[1])", self.path],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(directory / "forker.log", "ab"),
            cwd=str(Path(__file__).resolve().parents[2]))
        deadline = time.monotonic() + 60
        while not os.path.exists(self.path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the tests' syncd forker did not start: see {directory / 'forker.log'}")
            time.sleep(0.02)

    def takes(self, args, executable, preexec_fn, pass_fds, env, shell, gid, gids, uid, umask, process_group,
              cwd) -> bool:
        if self.proc.poll() is not None or shell or executable is not None or preexec_fn is not None or pass_fds:
            return False
        if (gid, gids, uid, process_group) != (None, None, None, -1) or umask != -1:
            return False
        if not isinstance(args, (list, tuple)) or len(args) < 3:
            return False
        if os.fspath(args[0]) != sys.executable or [os.fspath(a) for a in args[1:3]] != ["-m", "syncd"]:
            return False
        if cwd is not None and not os.path.isdir(cwd):
            return False  # subprocess's own error
        given = os.environ if env is None else env
        at_start = {k for k in (*given, *self.env) if k.startswith(_ENV_AT_START)}
        return all(given.get(k) == self.env.get(k) for k in at_start)

    def spawn(self, args, cwd, env, new_session: bool, fds: list[int]) -> int:
        request = {"argv": [os.fspath(a) for a in args[3:]], "cwd": None if cwd is None else os.fspath(cwd),
                   "env": {os.fsdecode(k): os.fsdecode(v) for k, v in (os.environ if env is None else env).items()},
                   "new_session": bool(new_session)}
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.connect(self.path)
            socket.send_fds(s, [json.dumps(request).encode()], fds)
            reply = s.recv(64)
        if not reply:
            raise RuntimeError("the tests' syncd forker did not answer")
        return int(reply)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def _prctl(option: int, value: int) -> None:
    if ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl")


def _execute_child(self, args, executable, preexec_fn, close_fds, pass_fds, cwd, env, startupinfo, creationflags,
                   shell, p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite, restore_signals, gid, gids, uid,
                   umask, start_new_session, process_group):
    _popens.add(self)
    forker = _forker
    if forker is None or not forker.takes(args, executable, preexec_fn, pass_fds, env, shell, gid, gids, uid, umask,
                                          process_group, cwd):
        return _original_execute_child(self, args, executable, preexec_fn, close_fds, pass_fds, cwd, env,
                                       startupinfo, creationflags, shell, p2cread, p2cwrite, c2pread, c2pwrite,
                                       errread, errwrite, restore_signals, gid, gids, uid, umask,
                                       start_new_session, process_group)
    fds = [p2cread if p2cread != -1 else 0, c2pwrite if c2pwrite != -1 else 1, errwrite if errwrite != -1 else 2]
    try:
        self.pid = forker.spawn(args, cwd, env, start_new_session, fds)
        self._child_created = True
    finally:
        self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)


def reap_adopted() -> None:
    """Reap the exited processes this worker adopted as subreaper (a server a test's syncd
    started and left, a browser's helpers), not the children its Popen objects wait for."""
    waited_for = {p.pid for p in subprocess._active} | {p.pid for p in list(_popens) if p.returncode is None}
    me = str(os.getpid())
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in waited_for:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, parent = f.read().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue
        if state == "Z" and parent == me:
            try:
                os.waitpid(int(entry), os.WNOHANG)
            except ChildProcessError:
                pass


def install(directory: Path) -> None:
    global _forker
    _forker = Forker(directory)
    subprocess.Popen._execute_child = _execute_child


def uninstall() -> None:
    global _forker
    subprocess.Popen._execute_child = _original_execute_child
    if _forker is not None:
        _forker.close()
        _forker = None


# The forker's side.

def serve(path: str) -> None:
    """Import syncd (every verb), then fork a child per request until the worker goes."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    import gc

    import syncd.cli

    syncd.cli.build_parser()  # imports every verb's module, and through them the rest of syncd
    gc.collect()
    gc.freeze()  # the children's collections leave the inherited objects alone (and unshared pages unwritten)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(path + ".new")
    server.listen(64)
    os.rename(path + ".new", path)  # the worker waits for this name: bound and listening
    while True:
        conn, _ = server.accept()
        with conn:
            message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            try:
                conn.sendall(str(_fork(server, conn, json.loads(message), fds)).encode())
            finally:
                for fd in fds:
                    os.close(fd)


def _fork(server: socket.socket, conn: socket.socket, request: dict, fds: list[int]) -> int:
    """The pid of a grandchild running syncd, its parent gone (so re-parented to the
    worker, the subreaper) before the pid is answered."""
    read, write = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(read)
            child = os.fork()
            if child == 0:
                os.close(write)
                _run_syncd(server, conn, request, fds)  # never returns
            os.write(write, str(child).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as r:
        pid = r.read()
    os.waitpid(middle, 0)
    return int(pid)


def _run_syncd(server: socket.socket, conn: socket.socket, request: dict, fds: list[int]):
    code = 1
    try:
        server.close()
        conn.close()
        if request["new_session"]:
            os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(3, 1 << 20)  # close_fds, as subprocess does
        os.environ.clear()
        os.environ.update(request["env"])
        if request["cwd"] is not None:
            os.chdir(request["cwd"])
        import runpy

        sys.argv = ["-m", *request["argv"]]
        code = 0
        runpy.run_module("syncd", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        _flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)  # as the interpreter ends on one not caught
    except BaseException:  # noqa: BLE001 - the interpreter's own report of an uncaught error
        sys.excepthook(*sys.exc_info())
        code = 1
    finally:
        try:
            import atexit
            import threading

            threading._shutdown()  # the interpreter's exit: non-daemon threads, then atexit
            atexit._run_exitfuncs()
        finally:
            if not _flush() and code == 0:
                code = 120
            os._exit(code)


def _flush() -> bool:
    ok = True
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # noqa: BLE001 - as at the interpreter's exit
            ok = False
    return ok
