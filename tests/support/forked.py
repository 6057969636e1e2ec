"""The suite's `python -m syncd ...` processes, forked from a process that has imported
what every syncd command imports, instead of started from nothing.

Every test starts syncd as real processes: daemons, and commands such as `syncd verify`.
A new interpreter spent about a quarter of a second of CPU importing Python's asyncio,
pydantic, asyncpg, syncd's configuration and the rest before syncd did anything, over
four thousand times a run: half of the suite's CPU. Here one process per test worker (the
"forker") imports once the modules that every verb imports (none that only some verbs
do), and each `subprocess.Popen([sys.executable, "-m", "syncd", ...])` of the tests is a
fork of it that then does what `python -m syncd` does: import the rest of what its verb
imports, as in production, and run syncd's `__main__`, with the test's argv, environment,
working directory and standard streams, ending as the interpreter ends (threads joined,
atexit, teardown, the exit code of an uncaught exception or signal).

The process a test gets is still a real child of the test's worker: its own pid, which
the test signals, kills with SIGKILL, reads in /proc and waits for through the same Popen
object (the forker forks twice and the worker is the children's subreaper, so the
process is re-parented to the worker before its pid is answered). What differs from a
fresh interpreter: those modules were imported before (their import-time warnings go
to the forker's log), the children of one worker share the forker's hash seed, and
/proc/PID/cmdline shows the forker's command line. Tests about the interpreter's own
start get a fresh one: a command line other than `-m syncd`, a PYTHON*/LC_*/LANG/TZ
variable that differs from the worker's, a preexec_fn, pass_fds, another user or group,
a umask or a shell all take subprocess's own path, as does every Popen while the forker
is not running, and all of them with SYNCD_TEST_FORK=0."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
_ENV_AT_START = ("PYTHON", "LC_", "LANG", "TZ")  # read by the interpreter at its start
_MAX_REQUEST = 100_000  # bytes: a larger environment takes the fresh path

_original_execute_child = subprocess.Popen._execute_child
_forker: "Forker | None" = None
_popens: "weakref.WeakSet[subprocess.Popen]" = weakref.WeakSet()  # every Popen of this worker
# Held from a Popen's start until its pid is known, and while adopted processes are reaped:
# a child that exits at once is never taken for an adopted one.
_spawning = threading.Lock()


class Forker:
    """The forking process of this test worker, and how to ask it for a child."""

    def __init__(self, directory: Path, modules: Path):
        self.path = str(directory / "forker.sock")
        self.env = dict(os.environ)
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from tests.support.forked import serve; serve(*sys.argv[1:])", self.path,
             str(modules)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(directory / "forker.log", "ab"),
            cwd=str(Path(__file__).resolve().parents[2]))
        deadline = time.monotonic() + 120
        while not os.path.exists(self.path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the tests' syncd forker did not start: see {directory / 'forker.log'}")
            time.sleep(0.02)

    def request(self, args, executable, preexec_fn, pass_fds, env, shell, gid, gids, uid, umask, process_group,
                cwd, start_new_session) -> bytes | None:
        """The forker's request for this Popen, or None where a fresh interpreter is needed."""
        if self.proc.poll() is not None or shell or executable is not None or preexec_fn is not None or pass_fds:
            return None
        if (gid, gids, uid, process_group) != (None, None, None, -1) or umask != -1:
            return None
        if not isinstance(args, (list, tuple)) or len(args) < 3 or not all(isinstance(a, str) for a in args):
            return None
        if args[0] != sys.executable or list(args[1:3]) != ["-m", "syncd"]:
            return None
        cwd = os.path.abspath(os.fspath(cwd) if cwd is not None else os.getcwd())
        if not os.path.isdir(cwd):
            return None  # subprocess's own error
        given = os.environ if env is None else env
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in given.items()):
            return None
        at_start = {k for k in (*given, *self.env) if k.startswith(_ENV_AT_START)}
        if any(given.get(k) != self.env.get(k) for k in at_start):
            return None
        message = json.dumps({"argv": list(args[3:]), "cwd": cwd, "env": dict(given),
                              "new_session": bool(start_new_session)}).encode()
        return message if len(message) <= _MAX_REQUEST else None

    def spawn(self, message: bytes, fds: list[int]) -> int | None:
        """The pid of the forked child; None if the forker did not answer."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
                s.connect(self.path)
                socket.send_fds(s, [message], fds)
                reply = s.recv(64)
        except OSError:
            return None
        return int(reply) if reply else None

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
    with _spawning:
        _popens.add(self)
        forker = _forker
        message = None if forker is None else forker.request(
            args, executable, preexec_fn, pass_fds, env, shell, gid, gids, uid, umask, process_group, cwd,
            start_new_session)
        pid = None
        if message is not None:
            fds = [p2cread if p2cread != -1 else 0, c2pwrite if c2pwrite != -1 else 1,
                   errwrite if errwrite != -1 else 2]
            pid = forker.spawn(message, fds)
        if pid is None:
            return _original_execute_child(self, args, executable, preexec_fn, close_fds, pass_fds, cwd, env,
                                           startupinfo, creationflags, shell, p2cread, p2cwrite, c2pread, c2pwrite,
                                           errread, errwrite, restore_signals, gid, gids, uid, umask,
                                           start_new_session, process_group)
        self.pid = pid
        self._child_created = True
        self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)


def reap_adopted() -> None:
    """Reap the exited processes this worker adopted as subreaper (a server a test's syncd
    started and left, a browser's helpers): never a child a Popen of this worker (or the
    forker's own) waits for."""
    with _spawning:
        waited_for = {p.pid for p in subprocess._active} | {p.pid for p in list(_popens) if p.returncode is None}
        if _forker is not None:
            waited_for.add(_forker.proc.pid)
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


def install(directory: Path, modules: Path) -> None:
    """`modules`: the file where the modules to import are kept, shared by the run's workers."""
    global _forker
    _forker = Forker(directory, modules)
    subprocess.Popen._execute_child = _execute_child


def uninstall() -> None:
    global _forker
    subprocess.Popen._execute_child = _original_execute_child
    if _forker is not None:
        _forker.close()
        _forker = None


# The forker's side.

def serve(path: str, modules: str) -> None:
    """Import what every verb of syncd imports, then fork a child per request until the
    worker goes. In a child, this returns nothing: it runs syncd as `python -m syncd`
    would, its exceptions and exit left to the interpreter."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    import gc
    import importlib

    for name in _libraries(modules):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - one a fresh interpreter imports its own way: left to it
            pass
    gc.collect()
    gc.freeze()  # the children's collections leave the inherited objects alone (and unshared pages unwritten)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(path + ".new")
    server.listen(64)
    os.rename(path + ".new", path)  # the worker waits for this name: bound and listening
    while True:
        conn, _ = server.accept()
        with conn:
            message, fds, _, _ = socket.recv_fds(conn, _MAX_REQUEST, 3)
            pid = _fork()
            if pid == 0:
                break  # the child
            try:
                conn.sendall(str(pid).encode())
            finally:
                for fd in fds:
                    os.close(fd)
    server.close()
    _become(json.loads(message), fds)
    import runpy

    runpy.run_module("syncd", run_name="__main__", alter_sys=True)


def _libraries(modules: str) -> list[str]:
    """The modules every verb of syncd imports before it runs (syncd's configuration and
    what all verbs share, with their libraries), asked of fresh interpreters, one per verb:
    none that only some verbs import, so a verb relying on a module it does not import
    itself fails here as it would in production. Asked by the run's first forker and kept
    in `modules` for the others (a dozen interpreters' start each, at the busiest moment)."""
    import fcntl

    with open(modules + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(modules):
            with open(modules) as f:
                return json.load(f)
        found = _asked_of_each_verb()
        with open(modules + ".new", "w") as f:
            json.dump(found, f)
        os.rename(modules + ".new", modules)
        return found


def _asked_of_each_verb() -> list[str]:
    verbs = subprocess.run([sys.executable, "-c", "from syncd.cli import VERBS; print(*VERBS)"],
                           capture_output=True, text=True, cwd="/", timeout=120).stdout.split()
    probes = [subprocess.Popen(
        [sys.executable, "-c", f"import sys, syncd.cli; syncd.cli.build_parser({verb!r}); print(*sys.modules)"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd="/") for verb in verbs]
    imported = [p.communicate(timeout=120)[0].split() for p in probes]
    common = set.intersection(*map(set, imported)) if imported else set()
    # In the order they were imported (the other order upset asyncio's C half in the children).
    return [m for m in imported[0] if m in common and m.split(".")[0] not in ("tests", "__main__")] if imported else []


def _fork() -> int:
    """0 in the grandchild; in the forker, the grandchild's pid, answered once its parent
    is gone (so it is the worker's, the subreaper's, child)."""
    read, write = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.close(read)
        try:
            child = os.fork()
        except BaseException:  # noqa: BLE001 - no pid: the worker's Popen fails on the empty answer
            os._exit(1)
        if child == 0:
            os.close(write)
            return 0
        try:
            os.write(write, str(child).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as r:
        pid = r.read()
    os.waitpid(middle, 0)
    return int(pid) if pid else -1


def _become(request: dict, fds: list[int]) -> None:
    """This process made into the one `python -m syncd ARGV` started by the test's Popen."""
    import io

    if request["new_session"]:
        os.setsid()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    os.closerange(3, 1 << 20)  # close_fds, as subprocess does
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.path[0] = request["cwd"]  # as `-m` sets it
    sys.argv = ["-m", *request["argv"]]
    # The standard streams as the interpreter makes them at its start, on what the
    # descriptors now are (the forker's were made on /dev/null).
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        old = getattr(sys, name)
        if old is None:
            continue
        unbuffered = fd and getattr(old, "write_through", False)
        raw = io.FileIO(fd, "rb" if fd == 0 else "wb", closefd=False)
        buffer = raw if unbuffered else (io.BufferedReader(raw) if fd == 0 else io.BufferedWriter(raw))
        stream = io.TextIOWrapper(buffer, encoding=old.encoding, errors=old.errors, newline=None if fd == 0 else "\n",
                                  line_buffering=fd != 0 and not unbuffered and (fd == 2 or raw.isatty()),
                                  write_through=bool(unbuffered))
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
