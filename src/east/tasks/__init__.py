"""Tasks: question sources (the built-in procedurally generated `arith`) and prompt rendering.

    from east.tasks import ArithSpec, make_questions
    questions = make_questions("test", 300, ArithSpec(), seed=0)
"""

from east.tasks.arith import ARITH_DEFAULT, ARITH_HARD, SPLITS, ArithSpec, make_questions

__all__ = ["ARITH_DEFAULT", "ARITH_HARD", "SPLITS", "ArithSpec", "make_questions"]
