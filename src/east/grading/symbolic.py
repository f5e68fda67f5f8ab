"""math-verify in worker processes with a hard wall-clock timeout per comparison.

    from east.grading.symbolic import verify_pairs
    verify_pairs([("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}")], timeout=5.0)   # [("ok", True)]

`east.grading.grade` calls this for the (answer, gold) pairs the numeric fast path cannot decide.
`verify_responses` is the plain per-response use of math-verify (its own extraction from the whole
response), which `east audit` takes as a reference grader:

    verify_responses([("... so she has $\\boxed{14}$ figs", "14")])   # [("ok", True, "14")]

A worker is this module run as `python -m east.grading.symbolic`, reading one JSON request per line
on stdin and writing one JSON reply per line on stdout.

Why our own pool rather than math-verify's timeout or a ProcessPoolExecutor: math-verify times out
with SIGALRM, which only works in the main thread of the main interpreter, and sympy can spend
minutes (or forever) on an innocent-looking answer such as `10^{10^{8}}`. A ProcessPoolExecutor
cannot kill one stuck task. Here each worker holds one comparison at a time; the parent waits on
the reply pipes until the earliest deadline, and a worker past its deadline is killed and replaced
(the item counts as "timeout"). math-verify's own timeouts are disabled in the workers.

Why plain subprocesses rather than multiprocessing's spawn / forkserver: those re-run the caller's
main script in every worker, so any script that grades without an `if __name__ == "__main__":` guard
would fail; a fresh `python -m` interpreter inherits nothing (no threads, no state) and needs no
guard. The price is about 1-2 s to import sympy per worker start, paid once per process (the pool
is reused across calls) and again only for a worker replaced after a timeout. `close_pool()` ends
the workers (also run at exit).
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

# A worker that has not imported math-verify by then is broken (e.g. a missing dependency).
_STARTUP_LIMIT = 120.0
# Address-space cap per worker: a runaway sympy integer fails with MemoryError instead of taking
# the machine's memory from the other processes.
_MEMORY_LIMIT = 3 * 1024**3
_GOLD_CACHE_SIZE = 4096

Verdict = tuple[str, bool]  # (status "ok" | "timeout" | "error", correct)
# (status "ok" | "no_answer" | "timeout" | "error", correct, the answer math-verify extracted or None)
ResponseVerdict = tuple[str, bool, "str | None"]
RESPONSE = "response"  # request flag: the first item is a whole response, not an extracted answer


# --- worker side ------------------------------------------------------------------------------


def boxed(answer: str) -> str:
    """The answer as math-verify should see it: one `\\boxed{}` (it reads the first box it finds)."""
    return "\\boxed{" + answer + "}"


def _parse(latex: str):
    from math_verify import parse

    return parse(boxed(latex), parsing_timeout=None)  # type: ignore[arg-type]  # our pool times out


def compare(answer: str, gold_parsed) -> Verdict:
    """math-verify's verdict on one answer against an already parsed gold."""
    from math_verify import verify

    parsed = _parse(answer)
    if not parsed:
        return ("error", False)
    return ("ok", bool(verify(gold_parsed, parsed, timeout_seconds=None)))


def compare_response(response: str, gold_parsed) -> tuple[str, bool, str | None]:
    """math-verify as commonly used: its own extraction from the whole response, against the gold."""
    from math_verify import parse, verify

    parsed = parse(response, parsing_timeout=None)  # type: ignore[arg-type]  # our pool times out
    if not parsed:
        return ("no_answer", False, None)
    return ("ok", bool(verify(gold_parsed, parsed, timeout_seconds=None)), str(parsed[-1]))


def _limit_memory() -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = _MEMORY_LIMIT if hard == resource.RLIM_INFINITY else min(_MEMORY_LIMIT, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (ImportError, ValueError, OSError):
        pass


def _exit_with_parent() -> None:
    """Die with the parent, even in the middle of a long sympy call: on Linux the kernel sends
    SIGKILL when the parent goes (PR_SET_PDEATHSIG); elsewhere a thread polls the parent's pid, which
    only gets the GIL between bytecodes. (Strictly, Linux tracks the parent *thread* that started us;
    the pool retries an item once if its worker vanishes, which covers that thread exiting.)"""
    parent = int(os.environ.get("EAST_GRADING_PARENT", os.getppid()))
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _worker_main() -> None:
    """Serve [index, answer, gold] lines from stdin until it closes; reply [index, status, correct].
    A request [index, response, gold, "response"] gets [index, status, correct, extracted answer]."""
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled" is on purpose
    _limit_memory()
    _exit_with_parent()
    # Replies get a private copy of stdout; anything a library prints goes to stderr instead, so it
    # cannot corrupt the protocol.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    golds: dict[str, list] = {}
    compare("1", _parse("1"))  # warm sympy's caches before reporting ready
    out.write('"ready"\n')
    out.flush()
    for line in sys.stdin:
        index, answer, gold, *mode = json.loads(line)
        try:
            if gold not in golds:
                if len(golds) >= _GOLD_CACHE_SIZE:
                    golds.clear()
                golds[gold] = _parse(gold)
            if not golds[gold]:
                verdict = ("error", False)
            elif mode == [RESPONSE]:
                verdict = compare_response(answer, golds[gold])
            else:
                verdict = compare(answer, golds[gold])
        except Exception:  # noqa: BLE001 - any failure of one comparison is that item's "error"
            verdict = ("error", False)
        out.write(json.dumps([index, *verdict]) + "\n")
        out.flush()


# --- parent side ------------------------------------------------------------------------------


@dataclass
class _Worker:
    process: subprocess.Popen
    started: float
    ready: bool = False
    task: int | None = None
    deadline: float = 0.0


def _worker_env() -> dict[str, str]:
    """The parent's environment, with our package importable even from an uninstalled checkout."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env["EAST_GRADING_PARENT"] = str(os.getpid())  # if we die before the worker starts, it sees a new ppid
    return env


class SymbolicPool:
    """`workers` math-verify processes; `verify` grades a batch with a per-item wall-clock timeout."""

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.size = workers
        self._lock = threading.Lock()
        self._workers = [self._start() for _ in range(workers)]
        self.replaced = 0  # workers killed after a timeout or found dead

    def _start(self) -> _Worker:
        process = subprocess.Popen(
            [sys.executable, "-m", "east.grading.symbolic"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_worker_env(),
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        return _Worker(process, time.monotonic())

    def _replace(self, slot: int) -> None:
        _stop(self._workers[slot].process)
        self._workers[slot] = self._start()
        self.replaced += 1

    def verify(self, pairs: list[tuple[str, ...]], timeout: float) -> list[tuple]:
        """(status, correct) for each (answer, gold): "ok", or "timeout" after `timeout` seconds of
        wall clock on that item, or "error" when math-verify cannot parse it or its worker died.
        An item (response, gold, RESPONSE) gets the worker's (status, correct, extracted) instead."""
        with self._lock:
            return self._verify(pairs, timeout)

    def _verify(self, pairs: list[tuple[str, ...]], timeout: float) -> list[tuple]:
        results: list[Verdict | None] = [None] * len(pairs)
        queue = deque(range(len(pairs)))
        retried: set[int] = set()
        while queue or any(w.task is not None for w in self._workers):
            for slot, w in enumerate(self._workers):
                if w.ready and w.task is None and queue:
                    index = queue.popleft()
                    if not self._send(slot, index, pairs, timeout):
                        queue.appendleft(index)  # that worker had died idle; its replacement takes it
            self._collect(results, self._wait_time(), queue, retried)
            self._enforce_deadlines(results)
        return results  # type: ignore[return-value]

    def _send(self, slot: int, index: int, pairs: list[tuple[str, ...]], timeout: float) -> bool:
        """Hand item `index` to the worker in `slot`; False (and a replacement) if it has died."""
        w = self._workers[slot]
        try:
            w.process.stdin.write(json.dumps([index, *pairs[index]]) + "\n")  # type: ignore[union-attr]
            w.process.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError):
            self._replace(slot)
            return False
        w.task = index
        w.deadline = time.monotonic() + timeout
        return True

    def _wait_time(self) -> float:
        """Seconds until the earliest item deadline (or a startup check if nothing is running)."""
        now = time.monotonic()
        deadlines = [w.deadline for w in self._workers if w.task is not None]
        return max(0.0, min(deadlines) - now) if deadlines else 1.0

    def _collect(self, results: list[Verdict | None], wait_time: float, queue: deque[int], retried: set[int]) -> None:
        """Receive every reply (or readiness) that arrives within `wait_time`."""
        waiting = {w.process.stdout: slot for slot, w in enumerate(self._workers) if not w.ready or w.task is not None}
        for stream in wait(list(waiting), timeout=wait_time):
            slot = waiting[stream]
            w = self._workers[slot]
            line = stream.readline()  # type: ignore[union-attr]
            if not line:  # the worker died (a crash, or the memory cap)
                if not w.ready:
                    raise RuntimeError("a math-verify worker exited while starting (is math-verify installed?)")
                if w.task is not None:
                    if w.task in retried:
                        results[w.task] = ("error", False)
                    else:  # once: the worker may have died of something other than this item
                        retried.add(w.task)
                        queue.appendleft(w.task)
                self._replace(slot)
                continue
            message = json.loads(line)
            if message == "ready":
                w.ready = True
            else:
                index, *verdict = message
                results[index] = tuple(verdict)  # type: ignore[assignment]
                w.task = None

    def _enforce_deadlines(self, results: list[Verdict | None]) -> None:
        now = time.monotonic()
        for slot, w in enumerate(self._workers):
            if w.task is not None and now >= w.deadline:
                results[w.task] = ("timeout", False)
                self._replace(slot)
            elif not w.ready and now - w.started > _STARTUP_LIMIT:
                raise RuntimeError(f"a math-verify worker did not start within {_STARTUP_LIMIT:.0f} s")

    def close(self) -> None:
        for w in self._workers:
            _stop(w.process)
        self._workers = []


def _stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait(timeout=10)
    for stream in (process.stdin, process.stdout):
        try:
            stream.close()  # type: ignore[union-attr]
        except OSError:
            pass


_POOL: SymbolicPool | None = None
_POOL_LOCK = threading.Lock()


def get_pool(workers: int | None = None) -> SymbolicPool:
    """The process-wide pool, (re)started with `workers` processes (default: up to 2)."""
    global _POOL
    size = workers or max(1, min(2, os.cpu_count() or 1))
    with _POOL_LOCK:
        if _POOL is None or _POOL.size != size:
            if _POOL is not None:
                _POOL.close()
            _POOL = SymbolicPool(size)
        return _POOL


def close_pool() -> None:
    """Stop the worker processes (a later call starts new ones)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None:
            _POOL.close()
            _POOL = None


atexit.register(close_pool)


def verify_pairs(pairs: list[tuple[str, str]], timeout: float = 5.0, workers: int | None = None) -> list[Verdict]:
    """math-verify's (status, correct) for each (answer, gold) pair, each under `timeout` seconds."""
    if not pairs:
        return []
    return get_pool(workers).verify(pairs, timeout)


def verify_responses(items: list[tuple[str, str]], timeout: float = 5.0, workers: int | None = None) -> list[ResponseVerdict]:
    """Plain per-response math-verify: (status, correct, extracted answer) for each (response, gold),
    each under `timeout` seconds; status "no_answer" when math-verify finds nothing to compare."""
    if not items:
        return []
    found = get_pool(workers).verify([(response, gold, RESPONSE) for response, gold in items], timeout)
    return [(v[0], v[1], v[2] if len(v) > 2 else None) for v in found]  # a timeout or crash has no answer


if __name__ == "__main__":
    _worker_main()
