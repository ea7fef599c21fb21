"""Errors keep their class and exit code across a process boundary, and say what to run again."""

from __future__ import annotations

import pytest

from bootstrap.errors import (
    BootstrapError,
    ErrorReport,
    EvaluationFailed,
    ExportFailed,
    Interrupted,
    PushFailed,
    TrainingFailed,
)


@pytest.mark.parametrize(
    "error",
    [
        TrainingFailed("x"),
        EvaluationFailed("x"),
        ExportFailed("x"),
        PushFailed("x"),
        Interrupted("x"),
    ],
)
def test_an_error_written_down_comes_back_as_itself(error: BootstrapError) -> None:
    error.hint, error.again = "lower the batch", "to resume"
    report = ErrorReport.model_validate_json(ErrorReport.of(error).model_dump_json())
    rebuilt = report.rebuild(TrainingFailed)
    assert type(rebuilt) is type(error) and rebuilt.exit_code == error.exit_code
    assert (rebuilt.message, rebuilt.hint, rebuilt.again) == ("x", "lower the batch", "to resume")


def test_a_code_nobody_owns_becomes_the_default_class() -> None:
    rebuilt = ErrorReport(exit_code=77, message="odd").rebuild(EvaluationFailed)
    assert type(rebuilt) is EvaluationFailed and rebuilt.exit_code == 6


def test_the_advice_names_the_command_that_was_run() -> None:
    error = Interrupted("SIGTERM received", hint="nothing was lost", again="to resume from it")
    text = error.render("grpo-bootstrap --workspace /w run --demo")
    assert text == (
        "SIGTERM received\n  → nothing was lost\n"
        "  → run `grpo-bootstrap --workspace /w run --demo` again to resume from it"
    )
    assert str(error).endswith("run the same command again to resume from it")


def test_exit_codes_are_distinct() -> None:
    codes = [cls.exit_code for cls in (TrainingFailed, EvaluationFailed, ExportFailed, PushFailed,
                                        Interrupted)]  # fmt: skip
    assert len(set(codes)) == len(codes) and BootstrapError.exit_code not in codes
