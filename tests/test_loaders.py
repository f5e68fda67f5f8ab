"""Task loaders on our own small fixture files: one Question shape out, clear errors naming file and line."""

from pathlib import Path

import pytest

from east.config import TaskConfig
from east.errors import UserError
from east.tasks.loaders import load_questions

FIXTURES = Path(__file__).parent / "fixtures"


def task(**kwargs) -> TaskConfig:
    return TaskConfig(train_size=None, test_size=None, **kwargs)


def test_gsm8k_gold_comes_after_the_hashes():
    questions = load_questions(task(name="gsm8k", train_path=str(FIXTURES / "gsm8k_small.jsonl")), "train")
    assert [q.gold for q in questions] == ["18", "3750", "150", "3"]
    assert questions[0].question.startswith("A baker")
    assert len({q.question_id for q in questions}) == 4


def test_math_gold_is_the_last_boxed_answer_and_level_type_are_kept():
    questions = load_questions(task(name="math", test_path=str(FIXTURES / "math_small.jsonl")), "test")
    assert [q.gold for q in questions] == ["\\frac{7}{8}", "7", "(-1, 3)", "5\\sqrt{2}"]
    assert questions[0].meta == {"level": "Level 1", "type": "Prealgebra"}


def test_math500_style_answer_column_and_ids():
    questions = load_questions(task(name="math", test_path=str(FIXTURES / "math500_small.jsonl")), "test")
    assert [q.gold for q in questions] == ["1024", "9\\pi"]
    assert questions[1].question_id == "own/circle-1.json"
    assert questions[1].meta["type"] == "Geometry"


def test_jsonl_with_user_named_fields():
    config = task(name="jsonl", train_path=str(FIXTURES / "custom_small.jsonl"), question_field="q", answer_field="gold")
    assert [q.gold for q in load_questions(config, "train")] == ["24", "12"]


def test_jsonl_answer_with_gsm8k_rationale_gives_the_final_answer(tmp_path):
    path = tmp_path / "raw.jsonl"
    path.write_text('{"question": "x", "answer": "She has 3 + 4 = 7 plums.\\n#### 7"}\n{"question": "y", "answer": "12"}\n')
    assert [q.gold for q in load_questions(task(name="jsonl", train_path=str(path)), "train")] == ["7", "12"]
    path.write_text('{"question": "x", "answer": "She has 7 plums.\\n####"}\n')
    with pytest.raises(UserError, match=r"raw.jsonl:1: field 'answer' has '####' but no answer after it"):
        load_questions(task(name="jsonl", train_path=str(path)), "train")


def test_size_limits_apply():
    config = TaskConfig(name="gsm8k", train_path=str(FIXTURES / "gsm8k_small.jsonl"), train_size=2)
    assert len(load_questions(config, "train")) == 2


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"question": "x"}\n', r"bad.jsonl:1: missing field 'answer'"),
        ('{"question": "x", "answer": "#### 1"}\n{oops\n', r"bad.jsonl:2: not valid JSON"),
        ('{"question": "x", "answer": "no hashes"}\n', r"bad.jsonl:1: .*####"),
        ('{"question": ["x"], "answer": "#### 1"}\n', r"bad.jsonl:1: field 'question' should be text"),
        ("\n", r"bad.jsonl: no questions found"),
        ('{"id": "a", "question": "x", "answer": "#### 1"}\n{"id": "a", "question": "y", "answer": "#### 2"}\n',
         r"bad.jsonl:2: duplicate question_id 'a'"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_questions(task(name="gsm8k", train_path=str(path)), "train")


def test_bad_rows_can_be_skipped_and_counted(tmp_path, capsys):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"question": "x", "answer": "#### 1"}\n{"question": "y"}\n')
    config = TaskConfig(name="gsm8k", train_path=str(path), skip_bad_rows=True)
    assert len(load_questions(config, "train")) == 1
    assert "skipped 1 row" in capsys.readouterr().out


def test_missing_file_and_missing_path():
    with pytest.raises(UserError, match="no such file"):
        load_questions(task(name="gsm8k", train_path="/nonexistent/x.jsonl"), "train")
    with pytest.raises(UserError, match="task.test_path is not set"):
        load_questions(task(name="math"), "test")


def test_arith_ood_split_is_harder_and_renamed():
    from east.tasks.arith import ARITH_HARD

    config = TaskConfig(name="arith", test_size=20, ood_arith=ARITH_HARD)
    ood = load_questions(config, "ood")
    test = load_questions(config, "test")
    assert all(q.question_id.startswith("arith-ood-") for q in ood)
    assert sum(q.meta["steps"] for q in ood) > sum(q.meta["steps"] for q in test)


def test_gsm8k_solution_ends_in_a_boxed_answer_for_few_shot_prompts():
    questions = load_questions(task(name="gsm8k", train_path=str(FIXTURES / "gsm8k_small.jsonl")), "train")
    assert questions[0].solution.endswith("The answer is \\boxed{18}.")
    assert "####" not in questions[0].solution
