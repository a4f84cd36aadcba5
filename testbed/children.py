"""Child processes of a test, the stack or a benchmark, and the run's own lifetime: every child in its
own process group, stopped with its group on exit, on a signal, and (PR_SET_PDEATHSIG) if we die."""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import tempfile
import time


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Children:
    """Every child in its own process group, killed with its group on stop (TERM, then KILL)."""

    def __init__(self, logdir: str) -> None:
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.log(name), "w")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, preexec_fn=_die_with_parent,
                             env={**os.environ, **(env or {})})
        log.close()
        self.procs.append((name, p))
        return p

    def log(self, name: str) -> str:
        """Where the child started as `name` writes its stdout and stderr."""
        return os.path.join(self.logdir, f"{name}.log")

    def stop(self, p: subprocess.Popen, term_wait: float = 5.0) -> None:
        for sig, wait in ((signal.SIGTERM, term_wait), (signal.SIGKILL, 2.0)):
            if p.poll() is not None:
                break
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                break
            try:
                p.wait(wait)
            except subprocess.TimeoutExpired:
                pass
        self.procs = [(n, q) for n, q in self.procs if q is not p]

    def stop_all(self) -> None:
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
            alive = [p for _, p in self.procs if p.poll() is None]
            for p in alive:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + wait
            for p in alive:
                try:
                    p.wait(max(0.0, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    pass


def stop_on_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt, so the caller's finally blocks stop the children."""
    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)


class Overtime(Exception):
    """The run's hard time bound passed (not a TimeoutError: nothing on the way may swallow it)."""


def watchdog(seconds: float) -> None:
    """A hard bound on the whole run: SIGALRM raises, the finally blocks stop the children."""
    def on_alarm(signum, frame):
        raise Overtime(f"benchmark exceeded its {seconds:.0f}s bound")
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(seconds))


# what ends a bounded run early: a signal, its time bound, a child that did not start or answer
STOPPED = (KeyboardInterrupt, Overtime, TimeoutError, RuntimeError)


@contextlib.contextmanager
def bounded_run(seconds: float, prefix: str):
    """A benchmark's run: signals and the hard time bound raise (STOPPED), and on the way out, however
    it ends, the bound is lifted and every child stopped. Yields the run's Children (logs in a new
    temporary directory named prefix...)."""
    stop_on_signals()
    watchdog(seconds)
    kids = Children(tempfile.mkdtemp(prefix=prefix))
    try:
        yield kids
    finally:
        signal.alarm(0)
        kids.stop_all()
