"""The grading stage: SampleSets in, GradedSets out (final answers, cluster keys, verdicts).

    from east.grading import grade, grade_sample_sets, extract_answer, cluster_key
    grades = grade(["... \\boxed{14}"], ["14"], kind="arith")
    graded, counts = grade_sample_sets(sample_sets, {q.question_id: q.gold for q in questions}, "math")

Kinds: "arith" and "gsm8k" compare numbers exactly; "math" adds math-verify in a timed process pool.
The final answer of a response is, in order of precedence: its `\\boxed{}` answer (boxes side by side
are one multi-value answer), the last "the answer is X", the last "#### X", a final line "Answer: X" /
"Final Answer: X" / "A: X" (`east.grading.extract` has the details). See `east.grading.grade` for the
comparison rules (scale words, percent, base subscripts, ...) and the clustering choice.
"""

from east.grading.extract import extract_answer, gold_from_gsm8k_answer, gold_from_math_solution
from east.grading.grade import KINDS, Grade, cluster_key, grade, grade_sample_sets, grade_with_stats

__all__ = [
    "KINDS",
    "Grade",
    "cluster_key",
    "extract_answer",
    "gold_from_gsm8k_answer",
    "gold_from_math_solution",
    "grade",
    "grade_sample_sets",
    "grade_with_stats",
]
