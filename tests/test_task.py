"""Your own task: a dataset of your own with its column names, reward functions of your own,
checked at plan time; and the worked example of README end to end on CPU.

Through the CLI, on real files in tmp_path; the worked example is the shipped
examples/units/ (a jsonl of questions and a reward that reads one of its columns).
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from bootstrap.cli import main
from bootstrap.errors import ConfigError
from bootstrap.task.registry import check_rewards, load_reward
from bootstrap.task.rewards import REWARDS

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "examples" / "units"
EXAMPLE_ARGS = [
    "--set", f"dataset={EXAMPLE / 'questions.jsonl'}", "--set", "prompt_column=q",
    "--set", "answer_column=a", "--set", "answer_format=plain",
    "--set", f"rewards=gsm8k.xmlcount,gsm8k.soft_format,{EXAMPLE / 'rewards.py'}:names_the_unit,gsm8k.correctness",
    "--set", "reward_weights=1,1,1,2",
]  # fmt: skip


def plan(tmp_path: Path, *settings: str) -> tuple[int, dict]:
    result = CliRunner().invoke(
        main, ["--json", "--workspace", str(tmp_path / "ws"), *settings, "plan", "--offline",
               "--profile", "cpu-smoke"],
    )  # fmt: skip
    return result.exit_code, json.loads(result.stdout)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_plan_records_the_task_with_its_rewards_weights_and_metric(tmp_path: Path) -> None:
    code, doc = plan(tmp_path, *EXAMPLE_ARGS)
    assert code == 0, doc
    task = doc["task"]
    assert task["local"] is True and task["dataset"] == str(EXAMPLE / "questions.jsonl")
    assert task["columns"] == {
        "prompt": "q",
        "answer": "a",
        "system": None,
        "answer_format": "plain",
    }
    assert task["rewards"][2] == f"{EXAMPLE / 'rewards.py'}:names_the_unit"
    assert (
        task["reward_weights"] == [1.0, 1.0, 1.0, 2.0]
        and task["eval_reward"] == "gsm8k.correctness"
    )
    assert [s["mirror"] for s in doc["dataset_sources"]] == ["local"]


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        (["--set", "prompt_column=question"], "has no column 'question' (its columns: q, a, unit)"),
        (["--set", "rewards=./examples/units/rewards.py:names_the_units"],
         "has no function 'names_the_units'"),
        (["--set", "rewards=gsm8k.corectness"], "is not a built-in one"),
        (["--set", "rewards=no_such_package.rewards:f"], "cannot import no_such_package.rewards"),
        (["--set", "rewards=gsm8k.xmlcount", "--set", "reward_weights=1,2"],
         "reward_weights has 2 value(s) for 1 reward(s)"),
    ],
)  # fmt: skip
def test_a_wrong_column_or_reward_fails_at_plan_with_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: list[str], fragment: str
) -> None:
    monkeypatch.chdir(REPO_ROOT)  # the relative reward path is the user's, from where they are
    args = ["--set", f"dataset={EXAMPLE / 'questions.jsonl'}", "--set", "prompt_column=q",
            "--set", "answer_column=a", "--set", "answer_format=plain", *settings]  # fmt: skip
    code, doc = plan(tmp_path, *args)
    assert code == 2, doc
    assert fragment in doc["error"], doc["error"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("def bad(completions):\n    return [1.0]", "cannot take TRL's arguments"),
        ("def bad(prompts, completions, **kw):\n    return kw['missing_column']", "failed on a sample row: KeyError"),
        ("def bad(prompts, completions, **kw):\n    return 1.0", "returned"),
        ("def bad(prompts, completions, **kw):\n    return ['x']", "returned ['x']"),
        ("import not_a_module\ndef bad(prompts, completions, **kw):\n    return [1.0]", "failed to load: ModuleNotFoundError"),
    ],
)  # fmt: skip
def test_a_users_reward_is_called_once_on_a_sample_row_at_plan_time(
    tmp_path: Path, body: str, fragment: str
) -> None:
    rewards = tmp_path / "my_rewards.py"
    rewards.write_text(body + "\n")
    code, doc = plan(tmp_path, *EXAMPLE_ARGS[:8], "--set", f"rewards={rewards}:bad")
    assert code == 2 and fragment in doc["error"], doc


def test_a_reward_from_an_importable_module_gets_trls_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "rewards.py").write_text(
        textwrap.dedent("""
        seen = []
        def length_penalty(prompts, completions, answer, unit, **kwargs):
            seen.append((prompts, completions, answer, unit))
            return [-0.001 * len(c[-1]["content"]) for c in completions]
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sample = {"prompt": [{"role": "user", "content": "q"}], "answer": "7", "gold_text": "7",
              "question": "q", "unit": "km"}  # fmt: skip
    check_rewards(["mypkg.rewards:length_penalty", "gsm8k.correctness"], sample)
    (prompts, completions, answer, unit) = sys.modules["mypkg.rewards"].seen[0]
    assert prompts == [sample["prompt"]] and answer == ["7"] and unit == ["km"]
    assert completions[0][-1]["content"].endswith("<answer>\n7\n</answer>\n")
    assert load_reward("gsm8k.correctness") is REWARDS["gsm8k.correctness"]


def test_a_dataset_without_a_test_split_holds_out_the_same_rows_every_time(tmp_path: Path) -> None:
    from bootstrap.task.dataset import Columns, hold_out, normalize, read_table

    rows = [{"q": f"What is {i} + 1?", "a": str(i + 1)} for i in range(50)]
    table = normalize(read_table(write_jsonl(tmp_path / "d.jsonl", rows)), Columns(prompt="q", answer="a"),
                      source="d.jsonl")  # fmt: skip
    train, test = hold_out(table, 0.1, seed=3)
    again = hold_out(table, 0.1, seed=3)
    assert (train.num_rows, test.num_rows) == (45, 5)
    assert test.column("question").to_pylist() == again[1].column("question").to_pylist()
    assert not set(test.column("question").to_pylist()) & set(train.column("question").to_pylist())
    assert (
        hold_out(table, 0.1, seed=4)[1].column("question").to_pylist()
        != test.column("question").to_pylist()
    )
    with pytest.raises(ConfigError, match="leaves none to train on"):
        hold_out(table.slice(0, 1), 0.5, seed=3)


@pytest.mark.slow
def test_the_worked_example_runs_from_its_file_to_a_gguf(
    tmp_path: Path, demo_workspace: Path
) -> None:
    """README's "Your own task", on the demo's model: fetch reads the jsonl where it is, training
    logs the user's reward, evaluation scores with the task's metric, export writes the GGUF."""
    ws = demo_workspace
    args = ["--json", "--workspace", str(ws), *EXAMPLE_ARGS, "--set", "max_steps=6",
            "--set", "export_formats=lora,gguf-q4_k_m", "run", "--demo"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output[-3000:]
    manifest = json.loads((ws / "manifest.json").read_text())
    assert (
        manifest["dataset"]["mirror"] == "local"
        and manifest["dataset"]["files"][0]["path"] == "questions.jsonl"
    )
    steps = [json.loads(line) for line in (ws / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 6 and all("rewards/names_the_unit/mean" in s for s in steps)
    report = json.loads((ws / "report" / "report.json").read_text())
    assert (
        report["settings"]["eval_reward"] == "gsm8k.correctness" and report["settings"]["rows"] == 5
    )
    assert set(report["results"]) == {"base", "trained"}
    assert list((ws / "exports" / "gguf").glob("*Q4_K_M.gguf"))
    # the user edits their file: the dataset is read again, not trusted
    rows = (EXAMPLE / "questions.jsonl").read_text().splitlines()
    edited = tmp_path / "questions.jsonl"
    edited.write_text("\n".join(rows[:40]) + "\n")
    again = CliRunner().invoke(
        main, [a if "questions.jsonl" not in a else f"dataset={edited}" for a in args]
    )
    assert again.exit_code == 0, again.output[-3000:]
    statuses = {s["name"]: s["status"] for s in json.loads(again.stdout)["stages"]}
    assert statuses["fetch"] == "ran" and statuses["train"] == "ran"
