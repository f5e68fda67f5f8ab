"""Questions of a split, for every task: the built-in `arith`, `gsm8k`, `math`, and any `jsonl` file.

    from east.tasks.loaders import load_questions
    questions = load_questions(config.task, "train")

gsm8k / math / jsonl read a local JSONL or Parquet file, or a `datasets` hub id (which needs the
network, so not here). Every path gives the same `Question` shape. A row with a missing field, an
empty file, a gold answer that cannot be extracted, or (given the grading kind) a gold the grader can
never match is an error naming the file and line, unless `task.skip_bad_rows` is set, in which case
such rows are skipped and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from east import io
from east.errors import UserError
from east.records import Question

WARMUP_SIZE = 2000  # labelled arith examples available for few-shot prompts


def load_questions(task, split: str, grading_kind: str | None = None) -> list[Question]:
    """`task` is a `TaskConfig`; `split` is train, test, ood (arith only) or warmup (arith only).
    `grading_kind`: also refuse golds that grader can never match (a non-number under arith / gsm8k)."""
    if task.name == "arith":
        return arith_questions(task, split)
    path = {"train": task.train_path, "test": task.test_path}.get(split)
    if path is None:
        raise UserError(f"task.{split}_path is not set; give the {task.name} {split} split as a JSONL/Parquet file or hub id")
    parse = checked_gold({"gsm8k": gsm8k_question, "math": math_question, "jsonl": jsonl_parser(task)}[task.name],
                         grading_kind)
    questions, skipped = parse_rows(path, parse, prefix=f"{task.name}-{split}", hub_config=task.hub_config,
                                    skip_bad=task.skip_bad_rows, split=split)
    limit = task.train_size if split == "train" else task.test_size
    if skipped:
        print(f"{path}: skipped {skipped} row(s) without a usable question or gold answer")
    return questions[:limit] if limit else questions


def arith_questions(task, split: str) -> list[Question]:
    from east.tasks.arith import make_questions

    if split == "ood":
        if task.ood_arith is None:
            raise UserError("task.ood_arith is not set, so there is no out-of-domain split")
        questions = make_questions("test", task.test_size or 300, task.ood_arith, seed=task.seed)
        return [renamed(q, "ood") for q in questions]
    size = {"train": task.train_size or 400, "test": task.test_size or 300, "warmup": WARMUP_SIZE}[split]
    return make_questions(split, size, task.arith, seed=task.seed)


def renamed(question: Question, split: str) -> Question:
    return Question(question.question_id.replace("-test-", f"-{split}-"), question.question, question.gold,
                    question.solution, {**question.meta, "split": split})


# ----------------------------------------------------------------------------------------------------
# Rows from files


def rows_of(path: str, hub_config: str | None, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) pairs of a JSONL / Parquet file, or of a hub data set."""
    file = Path(path)
    if file.suffix in (".jsonl", ".json") and file.exists():
        yield from io.jsonl_rows(file)
    elif file.suffix == ".parquet" and file.exists():
        yield from enumerate(io.read_parquet(file), 1)  # a damaged file is a one-line error naming it
    elif file.suffix in (".jsonl", ".json", ".parquet"):
        raise UserError(f"{path}: no such file")
    else:
        yield from hub_rows(path, hub_config, split)


def hub_rows(hub_id: str, hub_config: str | None, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    import datasets

    try:
        data = datasets.load_dataset(hub_id, hub_config, split=split)
    except Exception as exc:  # datasets raises many types for offline / missing data sets
        raise UserError(f"{hub_id}: could not load split {split!r} from the hub ({type(exc).__name__}); "
                        "give a local JSONL/Parquet file instead") from None
    for number, row in enumerate(data, 1):
        yield number, row


class BadRow(ValueError):
    """A row that cannot become a Question; the message says which field and why."""


def checked_gold(parse: Callable[[dict[str, Any]], tuple[str, str, dict, str | None]], grading_kind: str | None):
    """`parse`, also refusing a gold that is not a number under the number-based graders (arith, gsm8k)."""
    if grading_kind not in ("arith", "gsm8k"):
        return parse

    def parse_checked(row: dict[str, Any]) -> tuple[str, str, dict, str | None]:
        from east.grading.numeric import parse_number

        parsed = parse(row)
        if parse_number(parsed[1]) is None:
            # Such a gold only matches a word-for-word identical answer; the flexible (last-number) accuracy
            # never counts it, so the question is almost certainly a broken row.
            raise BadRow(f"gold answer {parsed[1]!r} is not a number, but the {grading_kind} grader compares numbers "
                         "(set grading.kind=math to compare expressions)")
        return parsed

    return parse_checked


def parse_rows(path: str, parse: Callable[[dict[str, Any]], tuple[str, str, dict, str | None]], *, prefix: str,
               hub_config: str | None, skip_bad: bool, split: str) -> tuple[list[Question], int]:
    questions, seen, skipped = [], {}, 0
    for number, row in rows_of(path, hub_config, split):
        try:
            text, gold, meta, solution = parse(row)
        except BadRow as exc:
            if skip_bad:
                skipped += 1
                continue
            raise UserError(f"{path}:{number}: {exc} (fix the row, or set task.skip_bad_rows=true to skip it)") from None
        qid = str(row.get("question_id") or row.get("unique_id") or row.get("id") or f"{prefix}-{number:05d}")
        if qid in seen:
            raise UserError(f"{path}:{number}: duplicate question_id {qid!r} (first at line {seen[qid]}); ids must be unique")
        seen[qid] = number
        questions.append(Question(qid, text, gold, solution, meta))
    if not questions:
        why = f"all {skipped} row(s) skipped as bad" if skipped else "the file has no rows"
        raise UserError(f"{path}: no questions found ({why}); the {split} split needs at least one row with a "
                        "question and a gold answer")
    return questions, skipped


def text_field(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    if value is None:
        raise BadRow(f"missing field {name!r} (fields present: {', '.join(sorted(row)) or 'none'})")
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise BadRow(f"field {name!r} should be text, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise BadRow(f"field {name!r} is empty")
    return text


def gsm8k_question(row: dict[str, Any]) -> tuple[str, str, dict, str]:
    from east.grading import gold_from_gsm8k_answer

    answer = text_field(row, "answer")
    try:
        gold = gold_from_gsm8k_answer(answer)
    except ValueError:
        raise BadRow("field 'answer' has no final answer after '####'") from None
    # The worked solution, ending the way our prompts ask answers to end (used for few-shot prompts).
    solution = answer.rsplit("####", 1)[0].rstrip() + f"\nThe answer is \\boxed{{{gold}}}."
    return text_field(row, "question"), gold, {}, solution


def math_question(row: dict[str, Any]) -> tuple[str, str, dict, str | None]:
    from east.grading import gold_from_math_solution

    meta = {key: row[key] for key in ("level", "type", "subject") if row.get(key) is not None}
    if "type" not in meta and "subject" in meta:
        meta["type"] = meta["subject"]
    if row.get("answer") not in (None, ""):
        gold = str(row["answer"]).strip()  # MATH-500 style files carry the answer directly
    else:
        solution = text_field(row, "solution")
        try:
            gold = gold_from_math_solution(solution)
        except ValueError:
            raise BadRow("field 'solution' has no \\boxed{} answer") from None
    return text_field(row, "problem"), gold, meta, row.get("solution")


def jsonl_parser(task) -> Callable[[dict[str, Any]], tuple[str, str, dict, str | None]]:
    def parse(row: dict[str, Any]) -> tuple[str, str, dict, str | None]:
        return (jsonl_field(row, task.question_field, "question_field"),
                jsonl_gold(jsonl_field(row, task.answer_field, "answer_field"), task.answer_field),
                {}, row.get("solution"))

    return parse


def jsonl_gold(answer: str, name: str) -> str:
    """The gold answer of a jsonl row: a whole GSM8K answer text (rationale, then "#### 42") gives "42",
    since compared as it is it would make every response wrong."""
    from east.grading import gold_from_gsm8k_answer

    if "####" not in answer:
        return answer
    try:
        return gold_from_gsm8k_answer(answer)
    except ValueError:
        raise BadRow(f"field {name!r} has '####' but no answer after it") from None


def jsonl_field(row: dict[str, Any], name: str, setting: str) -> str:
    """`text_field`, with a missing field pointing at the setting that names it (a file may call it otherwise)."""
    if row.get(name) is None:
        raise BadRow(f"missing field {name!r} (fields present: {', '.join(sorted(row)) or 'none'}; "
                     f"set task.{setting} if the file calls it something else)")
    return text_field(row, name)
