"""The command-line contract, through click's CliRunner with real files in tmp_path."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from bootstrap.cli import main
from bootstrap.detect import Detection
from bootstrap.errors import EnvironmentUnfit
from bootstrap.planning.plan import Plan


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def run_json(runner: CliRunner, *args: str, env: dict[str, str] | None = None) -> dict:
    result = runner.invoke(main, ["--json", *args], env=env)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)  # stdout holds the one JSON document and nothing else


def test_plan_json_matches_the_schema_on_a_cpu_machine(runner: CliRunner, tmp_path: Path) -> None:
    doc = run_json(runner, "--workspace", str(tmp_path), "plan", "--offline")
    jsonschema.validate(doc, Plan.model_json_schema(mode="serialization"))
    assert doc["config"]["workspace"] == str(tmp_path)
    assert doc["detection"]["gpus"]["gpus"] == []
    # no GPU and no profile asked for: the plan says why training can't run and what to do
    assert doc["training"] is None and "--profile cpu-smoke" in doc["refusal"]
    assert [s["mirror"] for s in doc["model_sources"]] == ["huggingface", "hf-mirror", "modelscope"]
    assert doc["backend"]["name"] == "trl"


def test_detect_json_matches_the_schema(runner: CliRunner) -> None:
    doc = run_json(runner, "detect", "--offline")
    jsonschema.validate(doc, Detection.model_json_schema(mode="serialization"))
    assert doc["region"]["region"] in ("cn", "global")
    assert doc["region"]["probes"] == []  # offline: nothing was probed


def test_region_flag_orders_mirrors_for_china(runner: CliRunner) -> None:
    doc = run_json(runner, "plan", "--offline", "--region", "cn", "--profile", "cpu-smoke")
    assert doc["detection"]["region"]["region"] == "cn"
    assert doc["detection"]["region"]["decided_by"] == "flag"
    assert [s["mirror"] for s in doc["dataset_sources"]] == [
        "modelscope",
        "hf-mirror",
        "huggingface",
    ]
    assert doc["dataset_sources"][0]["repo_id"] == "AI-ModelScope/gsm8k"
    assert doc["training"]["num_generations"] == 2


def test_environment_is_honoured_and_flags_win(runner: CliRunner) -> None:
    env = {"GRPO_BOOTSTRAP_REGION": "cn", "GRPO_BOOTSTRAP_MIRROR": "hf-mirror"}
    doc = run_json(runner, "plan", "--offline", env=env)
    assert doc["detection"]["region"]["region"] == "cn"
    assert [s["mirror"] for s in doc["model_sources"]] == ["hf-mirror"]
    assert doc["config_sources"]["mirror"] == "GRPO_BOOTSTRAP_MIRROR"
    doc = run_json(runner, "plan", "--offline", "--region", "global", env=env)
    assert doc["detection"]["region"]["region"] == "global"
    assert doc["config_sources"]["region"] == "flag"


def test_config_file_and_set(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("profile: cpu-smoke\ntrain:\n  max_steps: 7\n  learning_rate: 1.0e-5\n")
    doc = run_json(
        runner, "--config", str(path), "--set", "learning_rate=3e-6", "plan", "--offline"
    )
    assert doc["training"]["max_steps"] == 7
    assert doc["training"]["learning_rate"] == 3e-6
    assert doc["config_sources"]["max_steps"] == f"file {path}"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["plan", "--offline", "--region", "mars"], "Invalid value for '--region'"),
        (["--set", "learnig_rate=1", "plan"], "unknown config key 'learnig_rate'"),
        (["--set", "max_steps=-1", "plan", "--offline"], "train.max_steps = '-1' (from flag)"),
        (["plan", "--offline", "--profile", "gpu-huge"], "gpu-huge"),
        (["plan", "--offline", "--mirror", "github"], "mirror 'github' is not one of"),
        (["--set", "leaning_rate=1e-5", "plan", "--offline"], "did you mean learning_rate?"),
        (["export", "--offline", "--formats", ","], "export.export_formats = [] (from flag)"),
    ],
)
def test_bad_input_exits_2_with_the_reason(
    runner: CliRunner, args: list[str], fragment: str
) -> None:
    result = runner.invoke(main, args)
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr
    assert "Traceback" not in result.output


def test_json_errors_are_one_document(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--json", "--set", "max_steps=0", "plan", "--offline"])
    assert result.exit_code == 2
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["exit_code"] == 2 and "max_steps" in doc["error"]


@pytest.mark.parametrize(
    "args",
    [
        ["--json", "--config", "/no/such/job.yaml", "plan"],
        ["--json", "no-such-command"],
        ["--json"],
        ["--json", "plan", "--offline", "--region", "mars"],
        ["--json", "plan", "--offline", "--no-such-option"],
    ],
)
def test_usage_errors_are_one_json_document_too(runner: CliRunner, args: list[str]) -> None:
    result = runner.invoke(main, args)
    assert result.exit_code == 2, result.output
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["exit_code"] == 2 and doc["error"]


def test_gpu_profile_without_gpu_is_shown_as_refused(runner: CliRunner) -> None:
    doc = run_json(runner, "plan", "--offline", "--profile", "gpu-24gb")
    assert doc["training"] is None
    assert "gpu-24gb" in doc["refusal"] and "--profile cpu-smoke" in doc["refusal"]
    plan = Plan.model_validate(doc)
    with pytest.raises(EnvironmentUnfit) as info:  # what a GPU job does with this plan
        plan.require_training()
    assert info.value.exit_code == 3


def test_tokens_never_reach_the_output(runner: CliRunner) -> None:
    secret = "hf_SECRETtoken1234567890"
    env = {"HF_TOKEN": secret, "MODELSCOPE_API_TOKEN": "ms-" + secret}
    for args in (
        ["--json", "plan", "--offline"],
        ["plan", "--offline"],
        ["-v", "detect", "--offline"],
    ):
        result = runner.invoke(main, args, env=env)
        assert result.exit_code == 0
        assert secret not in result.stdout + result.stderr


def test_plan_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys, time; t = time.monotonic()\n"
        "from bootstrap.cli import main\n"
        "try:\n    main(['--json', 'plan', '--offline'], standalone_mode=False)\n"
        "finally:\n"
        "    heavy = [m for m in ('torch', 'transformers', 'trl', 'datasets') if m in sys.modules]\n"
        "    print(heavy, time.monotonic() - t, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    heavy, _seconds = done.stderr.strip().splitlines()[-1].rsplit(" ", 1)
    assert heavy == "[]"
    json.loads(done.stdout)


def test_module_entry_point(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bootstrap", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and "grpo-bootstrap" in done.stdout


def test_train_without_gpu_refuses_with_exit_3(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["--workspace", str(tmp_path), "train", "--offline"])
    assert result.exit_code == 3
    assert "--profile cpu-smoke" in result.stderr
    assert not any(tmp_path.iterdir())  # refused before touching the workspace


def test_a_memory_cap_on_an_h100_plans_the_16gb_recipe(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fakes.nvidia_smi import install_nvidia_smi

    install_nvidia_smi(tmp_path / "bin", ["H100"])
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    args = [
        "--workspace",
        str(tmp_path / "ws"),
        "--set",
        "gpu_memory_limit_gib=15",
        "plan",
        "--offline",
    ]
    doc = run_json(runner, *args)
    assert doc["detection"]["gpus"]["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"
    assert doc["profile"]["profile"]["name"] == "gpu-16gb"
    assert "capped at 15 GiB" in doc["profile"]["reason"]
    assert doc["training"]["gpu_memory_limit_gib"] == 15
    shown = runner.invoke(main, args, terminal_width=200)
    assert shown.exit_code == 0, shown.stderr
    assert "15 GiB (gpu_memory_limit_gib)" in shown.stdout


def test_a_bug_is_one_line_with_exit_1_and_the_traceback_only_with_v(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bootstrap.detect

    def broken(config: object) -> None:  # any bug of ours, raised where a command calls in
        raise RuntimeError("an unforeseen state")

    monkeypatch.setattr(bootstrap.detect, "detect", broken)
    result = runner.invoke(main, ["--json", "detect", "--offline"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["exit_code"] == 1 and doc["error"].startswith("internal error: RuntimeError")
    assert "Traceback" not in result.stderr and "report it" in result.stderr
    verbose = runner.invoke(main, ["-v", "detect", "--offline"])
    assert verbose.exit_code == 1 and "Traceback" in verbose.stderr


def test_run_says_which_profile_and_generation_engine_it_will_use(
    runner: CliRunner, tmp_path: Path
) -> None:
    # The plan is resolved and printed before any stage; an offline run stops at fetch.
    result = runner.invoke(
        main, ["--workspace", str(tmp_path), "run", "--offline", "--profile", "cpu-smoke"]
    )
    assert result.exit_code == 3, result.stderr
    first = result.stderr.splitlines()[:2]
    assert first[0].startswith("profile cpu-smoke") and "2 generations" in first[0], first
    assert first[1].startswith("generation HF generate, backend trl"), first
    assert "error: fetch: offline, and the workspace lacks" in result.stderr


def test_the_run_summary_shows_the_reward_curve_and_the_format_rate_before_and_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rich.console import Console

    from bootstrap import render
    from bootstrap.pipeline import RunSummary
    from bootstrap.train.metrics import RewardCurve

    def shown(**fields: object) -> str:
        out = io.StringIO()
        monkeypatch.setattr(render, "console", Console(file=out, width=200))
        values = {"workspace": "/ws", "stages": [], "accuracy_before": 0.0,
                  "accuracy_after": 0.0625, "strict_format_before": 0.125,
                  "strict_format_after": 0.625, "paths": {}, **fields}  # fmt: skip
        render.run_summary(RunSummary.model_validate(values))
        return out.getvalue()

    text = shown(reward_curve=RewardCurve(steps=200, window=10, first=0.1484, last=1.2031))
    assert "Accuracy on the test split: before 0.0 %, after 6.2 %" in text
    assert "Strict XML format on the test split: before 12.5 %, after 62.5 %" in text
    assert "Mean reward: first 10 steps 0.148 → last 10 steps 1.203 (of 200 steps)" in text
    untrained = shown(reward_curve=None, strict_format_after=None)
    assert "Mean reward" not in untrained
    assert "before 12.5 %, after -" in untrained
