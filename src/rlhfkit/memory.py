"""Process memory: hand freed memory back to the system, and measure each stage's peak.

Why this exists: on Linux the C allocator keeps memory that tensors freed in its heaps instead of
returning it, so a process that trains one model after another (the demo: SFT, sampling, reward
model, rounds of RL, evaluation) grows by each stage's leftovers. Measured on the demo's SFT stage
(135M parameters, fp32 AdamW): no tensor was alive after it, yet the process held 2.25 GiB, and
0.67 GiB after ``malloc_trim(0)``. :func:`release` does that trim, after a garbage collection.

:class:`StageMeter` times a stage and measures the peak resident set (RSS) *within* it, by
reading this process's RSS every 20 ms in a background thread (``/proc/self/statm``; a stage's
peak is the largest reading while it was open). It does not reset the kernel's high-water mark,
so ``/usr/bin/time -v`` and ``getrusage`` still see the process's true peak. Where there is no
``/proc`` the peak is the process's lifetime peak (``getrusage``), which the table says. Engines
in other processes are not counted: the demo's engine runs in this one.

:meth:`StageMeter.run` can also run a stage in a fresh process (:func:`in_fresh_process`), so
that it inherits none of the memory earlier stages left behind. That memory is not all freeable:
measured on the demo (Intel Xeon, 2 cores), a PPO stage alone in a process peaked at 5.2 GiB,
and the same stage after SFT, sampling and a reward model in one process at 6.1 GiB (7.3-7.9 in
the three-round demo), with no tensor of the earlier stages alive.

Nothing here imports torch: a trainer that wants the live-tensor figure of its stage passes a
counter of its own to :func:`note_live`.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import ctypes.util
import gc
import itertools
import json
import multiprocessing
import os
import re
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PeakWindow", "StageMeter", "StageRecord", "call", "in_fresh_process", "note_live",
           "peak_rss_gib", "release", "rss_gib", "trim"]

GIB = 2**30

_STATUS = Path("/proc/self/status")
_STATM = Path("/proc/self/statm")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
SAMPLE_EVERY_S = 0.02
"""How often the stage meter reads the resident set."""


def rss_gib() -> float:
    """This process's resident set now, GiB (0.0 where the system does not say)."""
    try:
        return int(_STATM.read_text().split()[1]) * _PAGE / GIB
    except (OSError, IndexError, ValueError):
        return 0.0


def peak_rss_gib() -> float:
    """The process's peak resident set so far, GiB (``VmHWM``, else ``getrusage``)."""
    try:
        found = re.search(r"^VmHWM:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        found = None
    if found:
        return int(found.group(1)) * 1024 / GIB
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / GIB


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (children, theirs, ...), read from ``/proc``.

    Empty where there is no ``/proc`` or the process is gone.
    """
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        found.append(p)
        for tid in tasks:
            try:
                todo += [int(c) for c in Path(f"/proc/{p}/task/{tid}/children").read_text().split()]
            except OSError:
                pass
    return found


def tree_memory_gib(pid: int) -> tuple[float, float]:
    """(Sum of the proportional set sizes, largest resident set) of ``pid``'s tree, GiB.

    The sum of PSS (``/proc/PID/smaps_rollup``: each page shared by n processes counts 1/n in
    each) is the memory the tree holds together, without counting twice the libraries and the
    copy-on-write pages that processes forked from one another share; the sum of their resident
    sets would. (0.0, 0.0) where the system does not say.
    """
    pss = rss = 0.0
    for p in process_tree(pid):
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        fields = dict(re.findall(r"^(Rss|Pss):\s+(\d+) kB", text, re.MULTILINE))
        pss += int(fields.get("Pss", 0)) * 1024 / GIB
        rss = max(rss, int(fields.get("Rss", 0)) * 1024 / GIB)
    return pss, rss


class _Sampler:
    """One daemon thread that reads the RSS every ``SAMPLE_EVERY_S`` while stages are open."""

    def __init__(self) -> None:
        self.peaks: dict[int, float] = {}  # open stage (its number) -> largest reading
        self.numbers = itertools.count()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def open(self) -> int:
        with self.lock:
            key = next(self.numbers)
            self.peaks[key] = rss_gib()
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
                self.thread.start()
        return key

    def close(self, key: int) -> float:
        with self.lock:
            return max(self.peaks.pop(key), rss_gib())

    def reached(self, gib: float) -> None:
        """Count ``gib`` as a reading of every open stage (a child process's peak)."""
        with self.lock:
            for key, peak in self.peaks.items():
                self.peaks[key] = max(peak, gib)

    def _run(self) -> None:
        while True:
            time.sleep(SAMPLE_EVERY_S)
            now = rss_gib()
            with self.lock:
                if not self.peaks:
                    self.thread = None
                    return
                for key, peak in self.peaks.items():
                    if now > peak:
                        self.peaks[key] = now


_SAMPLER = _Sampler()


class PeakWindow:
    """The peak resident set within a block: ``with PeakWindow() as w: ...; w.gib``.

    Read by the same 20 ms sampler as the stage meter (so a block shorter than that may miss a
    brief peak); where there is no ``/proc``, ``gib`` is the process's lifetime peak.
    """

    def __init__(self) -> None:
        self.gib = 0.0
        self.lifetime = not _STATM.exists()
        """Whether ``gib`` is the process's lifetime peak (no ``/proc`` to sample)."""
        self._key = 0

    def __enter__(self) -> PeakWindow:
        if not self.lifetime:
            self._key = _SAMPLER.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.gib = peak_rss_gib() if self.lifetime else _SAMPLER.close(self._key)


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _libc() if sys.platform.startswith("linux") else None


def release() -> float:
    """Collect garbage and return the allocator's free memory to the system; RSS after, GiB.

    A no-op beyond the collection where the C library has no ``malloc_trim`` (musl, macOS).
    """
    gc.collect()
    trim()
    return rss_gib()


def trim() -> None:
    """Return the allocator's free memory to the system, without a garbage collection.

    Cheap enough to call once per RL step: the freed activations of one step otherwise stay in
    the allocator's heaps in pieces that the next step's tensors do not fit exactly, and the
    resident set creeps up step by step.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


@dataclass
class StageRecord:
    """Time and memory of one stage."""

    seconds: float
    peak_rss_gib: float
    """Peak resident set within the stage, sampled (``peak_is_lifetime``: of the process)."""
    rss_after_gib: float
    """Resident set after the stage, once its memory was released."""
    live_gib: float | None = None
    """Largest live-tensor total a trainer of the stage reported (:func:`note_live`)."""
    peak_is_lifetime: bool = False


_ACTIVE: list[StageMeter] = []


def note_live(count: Callable[[], float]) -> None:
    """Report the live tensors of the running stage (GiB, by ``count()``), if one is metered.

    ``count`` is called only while a :class:`StageMeter` stage is open, so a trainer can call
    this at its fullest moment (after its first optimizer step) at no cost otherwise.
    """
    if _ACTIVE:
        stage = _ACTIVE[-1]
        value = count()
        stage.live = value if stage.live is None else max(stage.live, value)


@dataclass
class StageMeter:
    """Times stages and their peak memory; :meth:`write` saves them as JSON.

    ``with meter.stage("sft"): ...`` trims the allocator, runs the stage while the RSS is
    sampled, then releases memory (a garbage collection and a trim) and records its seconds,
    peak RSS and RSS after release. Only the end collects garbage: the stage before already did,
    and a full collection costs a quarter of a second or more in a process that has imported
    torch and transformers (0.26 s measured in a test process; 18 of them were a third of a
    two-round iterate run on the tiny model). A stage that runs again (``eval``
    once per algorithm) adds its seconds and keeps the larger peak. Stages may nest, also across
    meters (iterate's rounds inside the demo's RL stage): each open stage sees every reading.
    """

    stages: dict[str, StageRecord] = field(default_factory=dict)
    live: float | None = None
    """The live-tensor figure of the innermost open stage of this meter (:func:`note_live`)."""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Measure the block as stage ``name``."""
        trim()
        window = PeakWindow()
        outer = self.live  # of a stage of this meter already open around this one
        self.live = None
        _ACTIVE.append(self)
        start = time.perf_counter()
        try:
            with window:
                yield
        finally:
            seconds = time.perf_counter() - start
            _ACTIVE.remove(self)
            live = self.live
            self.live = outer
            for meter in _ACTIVE:  # the stages open around this one held these tensors too
                if live is not None:
                    meter.live = live if meter.live is None else max(meter.live, live)
            after = release()
            self._add(name, StageRecord(seconds, window.gib, after, live, window.lifetime))

    def run(self, name: str, fn: Callable[..., Any], /, *args: Any, fresh_process: bool = False,
            **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` as stage ``name``, in a new process with ``fresh_process``.

        In a new process (:func:`in_fresh_process`) the child's peak and live tensors count as
        the stage's, and ``rss_after_gib`` is this process's once the child is gone.
        """
        with self.stage(name):
            return call(fn, *args, fresh_process=fresh_process, **kwargs)

    def _add(self, name: str, rec: StageRecord) -> None:
        old = self.stages.get(name)
        if old is not None:
            live = max((v for v in (old.live_gib, rec.live_gib) if v is not None), default=None)
            rec = StageRecord(old.seconds + rec.seconds, max(old.peak_rss_gib, rec.peak_rss_gib),
                              rec.rss_after_gib, live, old.peak_is_lifetime or rec.peak_is_lifetime)
        self.stages[name] = rec

    def seconds(self) -> dict[str, float]:
        """Stage -> seconds."""
        return {n: r.seconds for n, r in self.stages.items()}

    def peak_gib(self) -> float:
        """The largest peak RSS over the stages, GiB."""
        return max((r.peak_rss_gib for r in self.stages.values()), default=0.0)

    def as_dict(self) -> dict[str, Any]:
        """Stages, total seconds and overall peak, for ``timings.json``."""
        return {"stages": {n: asdict(r) for n, r in self.stages.items()},
                "total_s": sum(r.seconds for r in self.stages.values()),
                "peak_rss_gib": self.peak_gib(), "pid": os.getpid()}

    def write(self, path: Path) -> Path:
        """Write :meth:`as_dict` to ``path``."""
        path.write_text(json.dumps(self.as_dict(), indent=2))
        return path


def _in_child(fn: Callable[..., Any], args: tuple, kwargs: dict
              ) -> tuple[Any, float, float | None]:
    """In the child: ``fn``'s result, the child's peak RSS and its live tensors (GiB).

    No stage of a meter: its closing collection and trim would be spent on a process about to
    exit. A bare meter on the stack takes what :func:`note_live` reports.
    """
    meter = StageMeter()
    _ACTIVE.append(meter)
    try:
        with PeakWindow() as window:
            result = fn(*args, **kwargs)
    finally:
        _ACTIVE.remove(meter)
    return result, window.gib, meter.live


_CONTEXT: Any = None


def in_fresh_process(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a new process that exits after it; its result (or exception).

    ``fn``, its arguments and its result cross by pickle, so ``fn`` must be a module-level
    function. On Linux and macOS the process is forked from a *fork server*: a clean process,
    started once, that has imported torch, transformers and the first ``fn``'s module and then
    never runs anything, so each stage starts in a fraction of a second with torch already
    imported and no state of this process (threads, models, engines, allocator heaps) copied.
    Elsewhere the process is spawned, which pays the imports each time. As with any
    :mod:`multiprocessing` start, a script that calls this must keep its top level under
    ``if __name__ == "__main__":``. A child that dies (killed for memory, say) raises
    ``RuntimeError`` naming ``fn``; an exception inside it is raised here with the child's
    traceback attached. Every :class:`StageMeter` stage open in this process counts the
    child's peak resident set and live tensors as its own.
    """
    global _CONTEXT
    if _CONTEXT is None:
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() \
            else "spawn"
        _CONTEXT = multiprocessing.get_context(method)
        if method == "forkserver":  # read when the server starts, which is on first use
            _CONTEXT.set_forkserver_preload(["torch", "transformers", fn.__module__])
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=_CONTEXT) as pool:
        try:
            result, peak, live = pool.submit(_in_child, fn, args, kwargs).result()
        except concurrent.futures.process.BrokenProcessPool as err:
            raise RuntimeError(
                f"the process running {fn.__module__}.{fn.__qualname__} died before it "
                "finished; its output above says why: memory ran out, a signal, or a script "
                "that starts fresh processes without `if __name__ == \"__main__\":` around "
                "its top level (each new process imports the script again)") from err
    _SAMPLER.reached(peak)  # every stage open here saw the child's peak
    if live is not None:
        note_live(lambda: live)  # the open stages' close passes it on outwards
    return result


def call(fn: Callable[..., Any], /, *args: Any, fresh_process: bool = False,
         **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``: here, or with ``fresh_process`` in :func:`in_fresh_process`."""
    return in_fresh_process(fn, *args, **kwargs) if fresh_process else fn(*args, **kwargs)
