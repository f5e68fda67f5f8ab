"""math-verify runs in killable worker processes: a comparison that makes sympy hang is stopped at
the timeout, counted as "timeout", and the pool keeps grading afterwards."""

from __future__ import annotations

import threading
import time

from east.grading import grade_with_stats
from east.grading.symbolic import get_pool, verify_pairs

# sympy expands this to an integer with 10^8 digits: tens of seconds or more, far above the timeout.
SLOW = "10^{10^{8}}"


def test_a_slow_comparison_times_out_and_the_pool_recovers():
    pool = get_pool()
    verify_pairs([("1", "1")])  # workers started and warm
    replaced = pool.replaced
    start = time.monotonic()
    results = verify_pairs([(SLOW, "1"), ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}")], timeout=1.0)
    elapsed = time.monotonic() - start
    assert results[0] == ("timeout", False)
    assert results[1] == ("ok", True)  # the other worker kept going
    assert pool.replaced == replaced + 1
    print(f"timeout returned after {elapsed:.2f} s")  # informative only: no timed assertion
    # the replacement worker grades normally
    assert verify_pairs([("\\sqrt{12}", "2\\sqrt{3}"), ("\\pi", "3")], timeout=5.0) == [("ok", True), ("ok", False)]


def test_timeouts_are_counted_and_incorrect_in_grade_stats():
    responses = [f"$\\boxed{{{SLOW}}}$", "$\\boxed{\\frac{1}{\\sqrt{2}}}$", "$\\boxed{7}$"]
    golds = ["2", "\\frac{\\sqrt{2}}{2}", "7"]
    grades, stats = grade_with_stats(responses, golds, "math", timeout=1.0)
    assert (grades[0].status, grades[0].correct) == ("timeout", False)
    assert grades[1].correct and grades[2].correct
    assert stats["timeout"] == 1 and stats["error"] == 0


def test_grading_works_outside_the_main_thread():
    out = {}

    def run():
        out["grades"] = grade_with_stats(["\\boxed{\\sqrt{8}}"], ["2\\sqrt{2}"], "math")[0]

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert out["grades"][0].correct


def test_a_worker_that_died_while_idle_is_replaced_without_losing_items():
    pool = get_pool()
    verify_pairs([("1", "1")])
    victim = pool._workers[0].process
    victim.kill()
    victim.wait()
    assert verify_pairs([("\\sqrt{4}", "2"), ("\\frac{6}{4}", "\\frac{3}{2}")]) == [("ok", True), ("ok", True)]
