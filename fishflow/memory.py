"""glibc's malloc for a run: one arena for every thread.

Chunk audio passes through buffers of 0.1-5 MB (response bodies, samples, filter output),
made in several threads (event loop, publisher, ``to_thread``). With glibc's default of an
arena per thread, those come from per-thread heaps that glibc keeps giving back and taking
again, so every buffer's pages are faulted in afresh. Measured on a 300 kB course (1,001
chunks, 18,400 s of audio, zero-latency emulator):

- arena per thread, mmap threshold fixed at 256 KiB (fishflow until 2026-12): 4.3M minor
  faults, 14.7 s of system CPU, peak RSS 476 MB;
- glibc's defaults: 0.8-1.3M faults, 8.4-9.7 s, 499-507 MB;
- one arena: 0.21M faults, 5.4-6.7 s, 469-479 MB (0.45 ms less CPU per audio second).

A thread keeps the arena it was first given, so this must come before the threads that carry
audio first allocate: ``fishflow`` calls it first thing, importing ``fishflow.run`` calls it
(before any run, for flows started otherwise), and deployments set ``MALLOC_ARENA_MAX=1`` in
the work pool's environment (the same setting, read by glibc at start-up, before Prefect's
own threads). Elsewhere (musl, macOS) it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools

_M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)


@functools.cache  # once per process
def use_one_arena() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, 1)
