"""GSM8K evaluation: scoring of scripted completions (the engine seam), the report files, and one
end-to-end run of the HF generation path on SmolLM2 + a random LoRA."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bootstrap.config import load_config
from bootstrap.detect import detect
from bootstrap.errors import ConfigError
from bootstrap.evaluate import (
    EvalReport,
    HFEngine,
    Messages,
    capture_sizes,
    engine_arguments,
    evaluate,
    lora_rank_bound,
    run_eval,
)
from bootstrap.planning.plan import Plan, build_plan
from bootstrap.task.prompts import SYSTEM_PROMPT, build_prompt
from bootstrap.train.metrics import StepMetrics
from bootstrap.workspace import Workspace
from tests.export_helpers import SMOLLM2_ID, make_lora_workspace
from tests.fakes.assets import write_gsm8k

TEST_ROWS = 16


def put_test_split(ws: Workspace, rows: int = TEST_ROWS) -> dict[str, str]:
    """A GSM8K-shaped test split where `fetch` leaves it; returns {question: gold number}."""
    paths = write_gsm8k(ws.root / "_gsm8k", train_rows=4, test_rows=rows, seed=3)
    ws.data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(paths["test"], ws.split_path("test"))
    table = pq.read_table(ws.split_path("test")).to_pylist()
    return {r["question"]: r["answer"].split("####")[-1].strip() for r in table}


def make_plan(ws: Workspace, **flags: object) -> Plan:
    config = load_config(
        environ={},
        flags={
            "model": SMOLLM2_ID,
            "profile": "cpu-smoke",
            "offline": True,
            "workspace": ws.root,
            **flags,
        },
    ).config
    return build_plan(config, detect(config))


class ScriptedEngine:
    """Answers each question the way `script(row_index, gold)` says; records what it was asked."""

    name = "scripted"

    def __init__(self, golds: dict[str, str], script: Callable[[int, str], str]) -> None:
        self.order = list(golds)
        self.golds = golds
        self.script = script
        self.asked: list[tuple[bool, list[Messages]]] = []

    def generate(
        self, prompts: Sequence[Messages], *, trained: bool, progress: Callable[[int], None]
    ) -> list[str]:
        self.asked.append((trained, list(prompts)))
        progress(len(prompts))
        out = []
        for messages in prompts:
            question = messages[-1]["content"]
            out.append(
                self.script(self.order.index(question), self.golds[question])
                if trained
                else "I don't know."
            )
        return out


def trained_script(i: int, gold: str) -> str:
    """Four kinds of answer, one per row in turn:
    0: the strict layout, the right number written with thousands commas -> correct, strict, soft
    1: the strict layout, a wrong number -> strict, soft
    2: both tags on one line, the right number -> correct, soft only
    3: plain prose with the right number -> nothing (prose is not an extracted answer)
    """
    kind = i % 4
    if kind == 0:
        return f"<reasoning>\nAdd them up.\n</reasoning>\n<answer>\n{int(gold):,}\n</answer>\n"
    if kind == 1:
        return f"<reasoning>\nGuess.\n</reasoning>\n<answer>\n{int(gold) + 1}\n</answer>\n"
    if kind == 2:
        return f"<reasoning>Quick.</reasoning> <answer>{gold}</answer>"
    return f"The answer is {gold}."


@pytest.fixture
def scripted_ws(tmp_path: Path) -> tuple[Plan, Workspace, ScriptedEngine]:
    ws = Workspace(tmp_path / "ws")
    golds = put_test_split(ws)
    return make_plan(ws), ws, ScriptedEngine(golds, trained_script)


def test_scores_of_scripted_answers(scripted_ws) -> None:
    plan, ws, engine = scripted_ws
    report = run_eval(plan, ws, lambda: engine, show_progress=False)
    base, trained = report.results["base"], report.results["trained"]
    assert (
        base.rows,
        base.correct,
        base.accuracy,
        base.strict_format_rate,
        base.soft_format_rate,
    ) == (16, 0, 0, 0, 0)
    # 16 rows, four kinds in turn: correct in kinds 0 and 2, strict in 0 and 1, soft in 0, 1, 2.
    assert (trained.rows, trained.correct, trained.accuracy) == (16, 8, 0.5)
    assert (trained.strict_format_rate, trained.soft_format_rate) == (0.5, 0.75)
    assert [e.correct for e in trained.examples] == [True, False, True]
    assert trained.engine == "scripted"
    # lm-eval's readings of the same answers: no "#### N" anywhere (strict-match 0); the last
    # number is the gold in kinds 0, 2 and 3 (its thousands commas are ignored), not in 1.
    assert trained.strict_match_accuracy == 0
    assert trained.flexible_extract_accuracy == 12 / 16
    # Every prompt carries the recipe's system prompt and the question as the user turn.
    for _, prompts in engine.asked:
        assert [m["role"] for m in prompts[0]] == ["system", "user"]
        assert prompts[0][0]["content"] == SYSTEM_PROMPT


def test_report_files(scripted_ws) -> None:
    plan, ws, engine = scripted_ws
    report = run_eval(plan, ws, lambda: engine, show_progress=False)
    on_disk = EvalReport.model_validate_json((ws.report / "report.json").read_text())
    assert on_disk == report
    md = (ws.report / "report.md").read_text()
    assert "| metric | base | trained | change |" in md
    assert "| accuracy | 0.0% (0/16) | 50.0% (8/16) | +50.0 pts |" in md
    assert "| strict format | 0.0% | 50.0% | +50.0 pts |" in md
    assert "| soft format | 0.0% | 75.0% | +75.0 pts |" in md
    assert md.count("Gold answer: **") == 3
    assert "No training metrics yet" in md and report.plots == []
    lines = (ws.report / "trained-completions.jsonl").read_text().splitlines()
    assert len(lines) == 16
    assert sum(json.loads(line)["correct"] for line in lines) == 8


def test_plots_of_reward_curves_and_completion_length(scripted_ws) -> None:
    plan, ws, engine = scripted_ws
    constant = dict.fromkeys(
        ("reward_std", "kl", "loss", "grad_norm", "learning_rate", "clipped_ratio", "step_seconds"),
        0.1,
    )
    steps = [
        StepMetrics(
            step=step,
            time="2026-01-01T00:00:00+00:00",
            reward=0.5 * step,
            rewards={"correctness": 0.4 * step, "strict_format": 0.1},
            completion_length=100.0 + step,
            completion_tokens_per_s=None,
            gpu_max_memory_allocated_bytes=None,
            gpu_memory_used_bytes=None,
            **constant,
        )
        for step in range(1, 6)
    ]
    ws.metrics.write_text("".join(m.to_json_line() + "\n" for m in steps))
    report = run_eval(plan, ws, lambda: engine, which=("base",), show_progress=False)
    assert (
        "| metric | base |\n|---|---|\n| accuracy | 0.0% (0/16) |"
        in (ws.report / "report.md").read_text()
    )
    assert report.plots == ["rewards.png", "completion_length.png"]
    for name in report.plots:
        data = (ws.report / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
        assert f"]({name})" in (ws.report / "report.md").read_text()


def test_limit_and_results_kept_across_runs_with_the_same_settings(scripted_ws) -> None:
    plan, ws, engine = scripted_ws
    run_eval(plan, ws, lambda: engine, which=("base",), limit=5, show_progress=False)
    report = run_eval(plan, ws, lambda: engine, which=("trained",), limit=5, show_progress=False)
    assert [len(prompts) for _, prompts in engine.asked] == [5, 5]
    assert sorted(report.results) == ["base", "trained"]  # base came from the first run
    assert report.results["trained"].correct == 3  # rows 0, 2, 4
    other = run_eval(plan, ws, lambda: engine, which=("trained",), limit=4, show_progress=False)
    assert sorted(other.results) == ["trained"]  # 5-row base numbers do not mix with 4 rows


def test_missing_inputs_are_config_errors_naming_the_command(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    plan = make_plan(ws)
    with pytest.raises(ConfigError, match="fetch"):
        evaluate(plan, ws, show_progress=False)  # no test split yet
    put_test_split(ws)
    with pytest.raises(ConfigError, match="fetch"):
        evaluate(plan, ws, which=("base",), show_progress=False)  # no base model
    ws.model_dir(SMOLLM2_ID).mkdir(parents=True)
    (ws.model_dir(SMOLLM2_ID) / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="train"):
        evaluate(plan, ws, which=("trained",), show_progress=False)  # no adapter


@pytest.mark.slow
def test_end_to_end_on_smollm2_with_a_lora(tmp_path: Path, smollm2_dir: Path) -> None:
    # alpha 16 (scale 2): a LoRA strong enough to change greedy answers within 12 tokens.
    plan, ws = make_lora_workspace(
        tmp_path / "ws", smollm2_dir, lora_alpha=16, eval_max_new_tokens=12, eval_batch_size=2
    )
    put_test_split(ws, rows=4)
    report = evaluate(plan, ws, limit=3, show_progress=False)
    assert sorted(report.results) == ["base", "trained"]
    for scores in report.results.values():
        assert (scores.rows, scores.engine) == (3, "hf")
        assert all(e.completion.strip() for e in scores.examples)
    base_text = [
        json.loads(line)["completion"]
        for line in (ws.report / "base-completions.jsonl").read_text().splitlines()
    ]
    trained_text = [
        json.loads(line)["completion"]
        for line in (ws.report / "trained-completions.jsonl").read_text().splitlines()
    ]
    assert base_text != trained_text  # the LoRA was applied for "trained" and only there
    # Left padding is right: each prompt alone gives what it gave inside a padded batch.
    single = HFEngine(
        ws.model_dir(SMOLLM2_ID), ws.lora, dtype="fp32", batch_size=1, max_new_tokens=12
    )
    prompts = [build_prompt(e.question) for e in report.results["base"].examples]
    assert single.generate(prompts, trained=False, progress=lambda n: None) == base_text


@pytest.mark.gpu
def test_vllm_engine_scores_like_hf(tmp_path: Path, smollm2_dir: Path) -> None:
    pytest.importorskip("vllm")
    from bootstrap.evaluate import VLLMEngine

    plan, ws = make_lora_workspace(tmp_path / "ws", smollm2_dir, eval_max_new_tokens=32)
    golds = put_test_split(ws, rows=8)
    engine = VLLMEngine(ws.model_dir(SMOLLM2_ID), ws.lora, plan=plan, max_new_tokens=32)
    report = run_eval(plan, ws, lambda: engine, show_progress=False)
    hf_engine = HFEngine(
        ws.model_dir(SMOLLM2_ID), ws.lora, dtype="bf16", batch_size=8, max_new_tokens=32
    )
    hf = run_eval(plan, ws, lambda: hf_engine, show_progress=False)
    assert report.results["trained"].engine == "vllm" and len(golds) == 8
    assert abs(report.results["trained"].accuracy - hf.results["trained"].accuracy) <= 0.25


@pytest.mark.gpu
def test_hf_engine_on_cuda_end_to_end(tmp_path: Path) -> None:
    # A tiny random Qwen2: the GPU machine lacks the SmolLM2 package.
    from bootstrap.demo.assets import build_tiny_qwen2

    tiny = build_tiny_qwen2(tmp_path / "tiny")
    plan, ws = make_lora_workspace(tmp_path / "ws", tiny, lora_alpha=16, eval_max_new_tokens=8)
    put_test_split(ws, rows=4)
    report = evaluate(plan, ws, limit=3, show_progress=False)
    assert [(s.rows, s.engine) for s in report.results.values()] == [(3, "hf"), (3, "hf")]
    assert (ws.report / "report.md").is_file()


@pytest.mark.gpu
def test_vllm_engine_evaluates_base_and_lora_on_the_3b_architecture(
    tmp_path: Path, random_qwen: Path
) -> None:
    # The GPU machine has no SmolLM2: Qwen2.5-3B's architecture with random weights, and a
    # random LoRA strong enough to change greedy answers.
    pytest.importorskip("vllm")
    from bootstrap.evaluate import VLLMEngine

    plan, ws = make_lora_workspace(
        tmp_path / "ws", random_qwen, lora_alpha=64, eval_max_new_tokens=16
    )
    put_test_split(ws, rows=4)
    engine = VLLMEngine(ws.model_dir(SMOLLM2_ID), ws.lora, plan=plan, max_new_tokens=16)
    report = run_eval(plan, ws, lambda: engine, show_progress=False)
    assert [(s.rows, s.engine) for s in report.results.values()] == [(4, "vllm"), (4, "vllm")]
    base, trained = (report.results[k].examples for k in ("base", "trained"))
    assert any(
        b.completion != t.completion for b, t in zip(base, trained, strict=True)
    )  # the LoRA is applied
    assert (ws.report / "report.md").is_file()


def write_model_config(model: Path, context: int = 32768) -> Path:
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": context}))
    return model


def test_the_base_and_the_trained_evaluation_configure_one_engine(tmp_path: Path) -> None:
    # vLLM keys its compile cache on the engine's configuration: the evaluation after training
    # loads what the one before it compiled only if the two ask for the same engine.
    model = write_model_config(tmp_path / "model")
    plan = make_plan(Workspace(tmp_path / "ws"), lora_rank=24)
    before = engine_arguments(model, plan, max_new_tokens=512)
    after = engine_arguments(model, plan, max_new_tokens=512, adapter_rank=24)
    assert before == after
    assert (before["enable_lora"], before["max_lora_rank"]) == (True, 32)  # 24 is no vLLM rank
    assert before["max_model_len"] == 1024 + 512
    assert before["compilation_config"] == {"cudagraph_capture_sizes": capture_sizes(256)}
    # An adapter trained at a higher rank than the plan's still loads.
    assert (
        engine_arguments(model, plan, max_new_tokens=512, adapter_rank=100)["max_lora_rank"] == 128
    )
    small = engine_arguments(write_model_config(tmp_path / "small", 600), plan, max_new_tokens=512)
    assert small["max_model_len"] == 600


@pytest.mark.parametrize(
    ("dtype", "expected"), [("fp32", "auto"), ("bf16", "bfloat16"), ("fp16", "float16")]
)
def test_the_evaluation_engine_runs_in_a_precision_vllms_lora_kernels_take(
    tmp_path: Path, dtype: str, expected: str
) -> None:
    # vLLM's LoRA kernels assert fp16/bf16 inputs (the 3B GPU test's engine died on an fp32
    # plan); "auto" lets vLLM run the checkpoint in half precision.
    model = write_model_config(tmp_path / "model")
    plan = make_plan(Workspace(tmp_path / "ws"), dtype=dtype)
    assert engine_arguments(model, plan, max_new_tokens=16)["dtype"] == expected


def test_lora_ranks_and_capture_sizes_follow_vllms_rules() -> None:
    assert [lora_rank_bound(r) for r in (1, 2, 16, 17, 64, 300, 512)] == [
        1,
        8,
        16,
        32,
        64,
        320,
        512,
    ]
    with pytest.raises(ValueError, match="up to 512"):
        lora_rank_bound(513)
    assert capture_sizes(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert capture_sizes(24) == [1, 2, 4, 8, 16, 24]
    assert capture_sizes(1) == [1]


@pytest.mark.gpu
def test_vllm_gives_both_evaluation_engines_one_compile_cache_key(tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    from vllm.config import CompilationConfig
    from vllm.engine.arg_utils import EngineArgs

    from bootstrap.demo.assets import build_tiny_qwen2

    model = build_tiny_qwen2(tmp_path / "tiny")
    plan = make_plan(Workspace(tmp_path / "ws"), lora_rank=16)

    def key(**change: object) -> str:
        arguments = {**engine_arguments(model, plan, max_new_tokens=64), **change}
        arguments["compilation_config"] = CompilationConfig(**arguments["compilation_config"])
        return EngineArgs(**arguments).create_engine_config().compute_hash()

    assert key() == key(max_lora_rank=16)
    assert key() != key(enable_lora=False)  # the key does see LoRA: the old base engine's


def test_without_flashinfer_vllm_is_told_to_sample_with_pytorch(monkeypatch) -> None:
    import importlib.util

    from bootstrap.evaluate import sampler_environment

    assert importlib.util.find_spec("flashinfer") is None  # as on this CPU machine
    assert sampler_environment({}) == {"VLLM_USE_FLASHINFER_SAMPLER": "0"}
    assert sampler_environment({"VLLM_USE_FLASHINFER_SAMPLER": "1"}) == {}  # the user's choice
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "flashinfer" else real_find_spec(name, *a),
    )
    assert sampler_environment({}) == {}


def test_the_lm_eval_protocol_asks_few_shot_without_a_chat_template(tmp_path: Path) -> None:
    """eval_protocol lm-eval-gsm8k: lm-evaluation-harness gsm8k's prompt, the first train rows
    as examples, and its stop at the next "Question:", so the figures compare with its own."""
    ws = Workspace(tmp_path / "ws")
    paths = write_gsm8k(ws.root / "_gsm8k", train_rows=8, test_rows=4, seed=3)
    ws.data_dir.mkdir(parents=True)
    shutil.copy2(paths["test"], ws.split_path("test"))
    shutil.copy2(paths["train"], ws.split_path("train"))
    train = pq.read_table(ws.split_path("train")).to_pylist()
    golds = [
        r["answer"].split("####")[-1].strip()
        for r in pq.read_table(ws.split_path("test")).to_pylist()
    ]
    asked: list[str] = []

    class FewShotEngine:
        name = "scripted"

        def generate(self, prompts, *, trained, progress):  # type: ignore[no-untyped-def]
            asked.extend(prompts)
            return [f" It is {g}.\n#### {g}\n\nQuestion: made up" for g in golds]

    plan = make_plan(ws, eval_protocol="lm-eval-gsm8k", eval_shots=2)
    report = run_eval(plan, ws, FewShotEngine, which=("base",), show_progress=False)
    first = asked[0]
    assert isinstance(first, str) and first.startswith(
        f"Question: {train[0]['question']}\nAnswer: {train[0]['answer']}\n\n"
    )
    assert first.count("Question:") == 3 and first.endswith("\nAnswer:")
    scores = report.results["base"]
    assert scores.strict_match_accuracy == 1.0 and scores.flexible_extract_accuracy == 1.0
    assert report.settings.protocol == "lm-eval-gsm8k" and report.settings.shots == 2
    assert not report.settings.chat_template and report.settings.system_prompt == ""
    text = (ws.report / "report.md").read_text()
    assert "2-shot" in text and "no chat template" in text and "lm-eval strict-match" in text
