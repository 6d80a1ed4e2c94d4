"""Processes a fishflow command starts do not outlive it, however it dies.

A lone `fishflow run` gets Prefect's ephemeral API server, a `uvicorn` child process that
Prefect stops at exit. A SIGKILLed CLI runs no exit code, and the server ran on as an orphan.
`guard_children()` starts a small watcher (this module, in its own session) that holds the read
end of a pipe whose write end only the CLI holds: the kernel closes it however the CLI ends, and
the watcher then stops what the CLI left behind: its descendants, noted from /proc while it
lived, and, when the CLI led its own process group (a shell's job), everything in that group.
SIGTERM first, SIGKILL after a few seconds.

Why not PR_SET_DEATHSIG: it must be set in the child between fork and exec (Prefect's Popen
has no hook for it), and it fires when the *thread* that forked exits, not the process.
Linux only (/proc); elsewhere `guard_children` does nothing.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time

POLL_S = 0.5  # how often the watcher notes the CLI's descendants
GRACE_S = 3.0  # SIGTERM, then SIGKILL after this long

_write_end: int | None = None


def guard_children() -> None:
    """Start the watcher for this process (once; a no-op off Linux)."""
    global _write_end
    if _write_end is not None or not sys.platform.startswith("linux"):
        return
    read, write = os.pipe()  # not inheritable: children Prefect starts do not hold it open
    try:
        starter = subprocess.Popen(
            [sys.executable, "-m", "fishflow.watchdog", str(os.getpid()), str(read)],
            pass_fds=(read,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the CLI's group does not reach it
        )
    except OSError:
        os.close(write)
        return  # no watcher: the server is stopped at a normal exit, as before
    finally:
        os.close(read)
    starter.wait()  # it forks the watcher and returns at once: no child left to reap
    _write_end = write


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, process group, start time) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    return int(fields[1]), int(fields[2]), int(fields[19])


def _processes() -> dict[int, tuple[int, int, int]]:
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := _stat(int(name))) is not None:
            found[int(name)] = stat
    return found


def _descendants(root: int, table: dict[int, tuple[int, int, int]]) -> dict[int, int]:
    """Every process below `root`: pid -> start time (a reused pid is not the same process)."""
    found: dict[int, int] = {}
    parents = {root}
    while parents:
        children = {p for p, (ppid, _, _) in table.items() if ppid in parents and p not in found}
        found.update({p: table[p][2] for p in children})
        parents = children
    return found


def _stop(pids: dict[int, int]) -> None:
    def alive() -> dict[int, int]:
        return {p: t for p, t in pids.items() if (s := _stat(p)) is not None and s[2] == t}

    for sig, wait_s in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, 1.0)):
        for pid in alive():
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)


def watch(parent: int, fd: int) -> None:
    """Note `parent`'s descendants until `fd` reads EOF (the parent is gone), then stop them."""
    own = _stat(parent)
    leader = own is not None and own[1] == parent  # it leads its process group
    grandparent = own[0] if own is not None else 0
    seen: dict[int, int] = {}
    while True:
        ready, _, _ = select.select([fd], [], [], POLL_S)
        if ready and not os.read(fd, 1):
            break
        seen.update(_descendants(parent, _processes()))
    if leader:  # what is left of its group: its children, however recently started (not
        # its siblings in a pipeline, `fishflow run ... | tee log`, whose parent is the shell)
        me = os.getpid()
        seen.update(
            {
                p: s[2]
                for p, s in _processes().items()
                if s[1] == parent and s[0] != grandparent and p != me
            }
        )
    _stop(seen)


def main(argv: list[str]) -> None:
    parent, fd = int(argv[0]), int(argv[1])
    if os.fork():  # the CLI waits for this first process only: the watcher is not its child
        os._exit(0)
    watch(parent, fd)


if __name__ == "__main__":
    main(sys.argv[1:])
