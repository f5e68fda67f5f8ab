"""Step verification (grading.verify_steps): hand-written sound and flawed arith solutions."""

import pytest

from east.config import load_config
from east.errors import UserError
from east.grading import grade, grade_sample_sets
from east.grading.steps import step_error, steps_sound
from east.records import SampleSet
from east.tasks.arith import make_questions
from east.weighting.stats import question_stats, summarise

SOUND = [
    "12+7=19\n19-5=14\n\\boxed{14}",
    "9*2=18\n\\boxed{18}",
    "20-20=0\n0+3=3\n\\boxed{3}",
    "8 / 2 = 4\n4 + 9 = 13\n\\boxed{13}",  # spaces around symbols are allowed
    "12+7=19\n19-5=14\n\\boxed{14}\n",  # a trailing newline
]

FLAWED = {
    "16-3=14\n14-1=13\n\\boxed{13}": "line 1: 16-3 is 13, not 14",  # wrong fact, right answer
    "12+7=19\n18-5=13\n\\boxed{13}": "line 2 starts from 18",  # not chained
    "12+7=19\n19-5=14\n\\boxed{15}": "the boxed answer 15",  # boxed is not the last result
    "\\boxed{14}": "no working",  # no equation at all
    "12+7=19\nso 19-5=14\n\\boxed{14}": "line 2 is not an equation",  # words in a line
    "12+7=19\n19-5=14": "not \\boxed",  # no boxed line
    "12+7=19\n19-5=14\n\\boxed{14} done": "not \\boxed",  # trailing text after the box
    "7/2=3\n\\boxed{3}": "not an integer",  # inexact division
    "12+7=19=19\n\\boxed{19}": "not an equation",  # two equals signs
    "12+7=19\n\n19x5=95\n\\boxed{95}": "line 2 is not an equation",  # unknown operator
}


@pytest.mark.parametrize("text", SOUND)
def test_sound_solutions_pass(text):
    assert step_error(text) is None


@pytest.mark.parametrize("text,reason", list(FLAWED.items()))
def test_flawed_solutions_are_named(text, reason):
    assert reason in step_error(text)
    assert not steps_sound(text)


def test_every_worked_solution_of_the_task_is_sound():
    questions = make_questions("train", 300)
    assert all(steps_sound(q.solution) for q in questions)


def test_verify_steps_only_demotes_right_answers_with_flawed_working():
    responses = ["16-3=14\n14-1=13\n\\boxed{13}", "16-3=13\n13-1=12\n\\boxed{12}", "16-3=13\n13-1=12\n\\boxed{13}",
                 "16-3=13\n13-1=12\n\\boxed{12}"]
    golds = ["13", "13", "13", "12"]
    plain = grade(responses, golds, "arith")
    steps = grade(responses, golds, "arith", verify_steps=True)
    assert [g.correct for g in plain] == [True, False, True, True]
    assert [g.correct for g in steps] == [False, False, False, True]
    assert [g.step_rejected for g in steps] == [True, False, True, False]
    # cluster keys still come from the final answers: the entropy is about disagreement between answers
    assert [g.key for g in steps] == [g.key for g in plain]


def test_graded_sets_and_question_stats_count_step_rejections():
    sets = [SampleSet("q1", "p", ["3+4=7\n\\boxed{7}", "3+4=8\n8-1=7\n\\boxed{7}", "3+4=8\n\\boxed{8}"], [1, 1, 1],
                      [True] * 3)]
    graded, counts = grade_sample_sets(sets, {"q1": "7"}, "arith", verify_steps=True)
    assert graded[0].correct == [True, False, False]
    assert graded[0].step_rejected == [False, True, False]
    assert counts["step_rejected"] == 1
    stats = question_stats(graded)
    assert stats[0].n_step_rejected == 1 and stats[0].n_correct == 1
    assert stats[0].cluster_sizes == [2, 1]  # two samples answer 7
    assert summarise(stats)["samples_step_rejected"] == 1
    plain, counts = grade_sample_sets(sets, {"q1": "7"}, "arith")
    assert plain[0].step_rejected == [] and "step_rejected" not in counts


def test_verify_steps_refuses_other_kinds():
    with pytest.raises(ValueError, match="verify_steps"):
        grade(["\\boxed{1}"], ["1"], "gsm8k", verify_steps=True)
    with pytest.raises(UserError, match="grading.verify_steps"):
        load_config(None, ["task.name=gsm8k", "task.train_path=x.jsonl", "task.test_path=y.jsonl",
                           "grading.verify_steps=true"])
    assert load_config(None, ["grading.verify_steps=true"]).grading.verify_steps
