"""The GRPO training job on CPU: real TRL GRPOTrainer runs on a tiny random Qwen2 with the
recipe's rewards, real checkpoints, a real resume and a real SIGTERM to a real process.

The runs are short (2-4 steps of 2 completions x 12 tokens); the expensive part is loading
torch/transformers/trl, so the three-run flow (train, resume, already done) shares one
module-scoped workspace and the tests below read what it left.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from bootstrap.caches import CACHE_DIRS
from bootstrap.config import load_config
from bootstrap.detect import detect
from bootstrap.errors import ConfigError, EnvironmentUnfit, TrainingFailed
from bootstrap.planning.plan import Plan, build_plan
from bootstrap.task.rewards import REWARD_FUNCS
from bootstrap.train import grpo
from bootstrap.train.backends import TrlBackend
from bootstrap.train.grpo import (
    RECIPE_BETA,
    StopRequest,
    TrainResult,
    grpo_config_kwargs,
    last_checkpoint,
    train,
)
from bootstrap.train.metrics import prune_metrics, read_metrics
from bootstrap.train.phases import PHASES
from bootstrap.workspace import Workspace
from tests.fakes.assets import write_gsm8k
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

MODEL_ID = "tests/tiny-random-qwen2"
REPO_ROOT = Path(__file__).resolve().parents[1]
REWARD_NAMES = [f.__name__ for f in REWARD_FUNCS]
# Small enough for seconds per step on two CPU cores; the recipe's shape otherwise.
FLAGS: dict[str, Any] = {
    "profile": "cpu-smoke",
    "offline": True,
    "model": MODEL_ID,
    "max_completion_length": 12,
    "sample_max_tokens": 8,
}


def make_workspace(root: Path, model_dir: Path) -> Workspace:
    """A workspace as `fetch` leaves it: the model under models/, GSM8K train under data/."""
    ws = Workspace(root)
    shutil.copytree(model_dir, ws.model_dir(MODEL_ID))
    splits = write_gsm8k(root / "_gsm8k_repo", train_rows=32, test_rows=4, seed=7)
    ws.data_dir.mkdir(parents=True)
    shutil.copy2(splits["train"], ws.split_path("train"))
    return ws


def make_plan(ws: Workspace, **flags: Any) -> Plan:
    config = load_config(environ={}, flags={**FLAGS, "workspace": ws.root, **flags}).config
    return build_plan(config, detect(config))


def metric_steps(ws: Workspace) -> list[int]:
    return [line["step"] for line in read_metrics(ws.metrics)]


def trainer_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / "trainer_state.json").read_text())


def _caches_while_training(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str | None]]:
    """The cache variables as the trainer is built (after the model loaded), recorded by a spy
    around the metrics callback's construction, which happens right then."""
    seen: list[dict[str, str | None]] = []
    real = grpo.metrics_callback

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append({name: os.environ.get(name) for name in CACHE_DIRS})
        return real(*args, **kwargs)

    monkeypatch.setattr(grpo, "metrics_callback", spy)
    return seen


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory, tiny_qwen2_dir: Path) -> dict[str, Any]:
    """Train 2 steps, then again with max_steps 4 (resume), then again (already done)."""
    ws = make_workspace(tmp_path_factory.mktemp("flow"), tiny_qwen2_dir)
    with pytest.MonkeyPatch.context() as env:
        for name in CACHE_DIRS:  # unset, as on a fresh machine; restored afterwards
            env.setenv(name, "")
            env.delenv(name)
        during = _caches_while_training(env)
        first = train(make_plan(ws, max_steps=2, save_steps=2), ws, show_progress=False)
        caches = {"during": during[0], "after": {name: os.environ.get(name) for name in CACHE_DIRS}}
    after_first = {
        "metrics": read_metrics(ws.metrics),
        "lora_config": json.loads((ws.lora / "adapter_config.json").read_text()),
        "lora_bytes": (ws.lora / "adapter_model.safetensors").read_bytes(),
        "checkpoints": sorted(p.name for p in ws.checkpoints.glob("checkpoint-*")),
    }
    second = train(make_plan(ws, max_steps=4, save_steps=2), ws, show_progress=False)
    metrics_after_second = ws.metrics.read_text()
    started = time.perf_counter()
    third = train(make_plan(ws, max_steps=4, save_steps=2), ws, show_progress=False)
    return {
        "ws": ws,
        "first": first,
        "caches": caches,
        "after_first": after_first,
        "second": second,
        "metrics_after_second": metrics_after_second,
        "third": third,
        "third_seconds": time.perf_counter() - started,
    }


def test_a_run_writes_metrics_for_every_step_with_each_reward(flow: dict[str, Any]) -> None:
    first: TrainResult = flow["first"]
    assert (first.steps, first.max_steps, first.resumed_from, first.already_done) == (
        2,
        2,
        None,
        False,
    )
    assert (first.backend, first.generation) == ("trl", "hf")
    assert "no CUDA GPU" in first.backend_reason
    lines = flow["after_first"]["metrics"]
    assert [line["step"] for line in lines] == [1, 2]
    for line in lines:
        for name in REWARD_NAMES:
            assert isinstance(line[f"rewards/{name}/mean"], float), (name, line)
        assert line["reward"] == pytest.approx(sum(line[f"rewards/{n}/mean"] for n in REWARD_NAMES))
        assert isinstance(line["reward_std"], float)
        assert isinstance(line["kl"], float)  # the recipe's beta keeps the KL term and its metric
        assert 0 < line["completion_length"] <= FLAGS["max_completion_length"]
        assert line["step_seconds"] > 0 and line["completion_tokens_per_s"] > 0
        # tokens/s is the step's completions (per-device batch 2) x mean length / step time
        expected = 2 * line["completion_length"] / line["step_seconds"]
        assert line["completion_tokens_per_s"] == pytest.approx(expected)
        assert line["gpu_max_memory_allocated_bytes"] is None  # CPU: no GPU figure, not a 0
        # Where the step went, from TRL's own profiling contexts and the Trainer's hooks.
        phases = line["phase_seconds"]
        assert set(phases) == set(PHASES)
        assert sum(phases.values()) == pytest.approx(line["step_seconds"], abs=0.05)
        measured = ("generate", "rewards", "scoring", "loss_forward", "backward", "optimizer")
        assert all(phases[name] > 0 for name in measured), phases
        assert phases["weight_sync"] == 0  # HF generate uses the trained model itself


def test_a_run_leaves_a_checkpoint_and_the_lora(flow: dict[str, Any]) -> None:
    assert flow["after_first"]["checkpoints"] == ["checkpoint-2"]
    config = flow["after_first"]["lora_config"]
    assert config["r"] == 8 and config["lora_alpha"] == 8  # cpu-smoke's rank, alpha = rank
    assert set(config["target_modules"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    }  # fmt: skip
    lora = flow["ws"].lora
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ):
        assert (lora / name).is_file(), name
    # no staging leftovers beside it
    assert not [p.name for p in lora.parent.iterdir() if p.name.startswith(".lora")]


def test_the_saved_adapter_loads_and_holds_only_the_trained_weights(flow: dict[str, Any]) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(flow["ws"].lora / "adapter_model.safetensors"))
    assert tensors and all("lora_A" in k or "lora_B" in k for k in tensors)
    assert not [k for k in tensors if ".ref." in k]  # no KL reference copy in the result
    # 2 layers x 7 projections x (A, B)
    assert len(tensors) == 2 * 7 * 2


def test_compile_caches_were_pointed_into_the_workspace_while_training(
    flow: dict[str, Any],
) -> None:
    cache_root = flow["ws"].cache
    assert flow["caches"]["during"] == {name: str(cache_root / d) for name, d in CACHE_DIRS.items()}
    assert all((cache_root / d).is_dir() for d in CACHE_DIRS.values())
    assert flow["caches"]["after"] == dict.fromkeys(CACHE_DIRS)  # and unset again afterwards


def test_caches_an_engine_moved_while_the_model_loaded_are_the_workspaces_again(
    tmp_path: Path, tiny_qwen2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An in-process vLLM engine points Triton and Inductor at its own directories while it
    starts, differently on a first launch and a relaunch (caches.py): training must still
    compile into, and find its kernels in, the workspace's."""
    ws = make_workspace(tmp_path / "ws", tiny_qwen2_dir)
    for name in CACHE_DIRS:
        monkeypatch.delenv(name, raising=False)
    engine = tmp_path / "vllm" / "torch_compile_cache"
    load = TrlBackend.load

    def load_starting_an_engine(self: TrlBackend) -> tuple[Any, Any, Any]:
        loaded = load(self)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(engine / "inductor_cache")
        os.environ["TRITON_CACHE_DIR"] = str(engine / "triton_cache")
        return loaded

    monkeypatch.setattr(TrlBackend, "load", load_starting_an_engine)
    during = _caches_while_training(monkeypatch)
    train(make_plan(ws, max_steps=1, save_steps=1), ws, show_progress=False)
    assert during[0]["TORCHINDUCTOR_CACHE_DIR"] == str(ws.cache / "torchinductor")
    assert during[0]["TRITON_CACHE_DIR"] == str(ws.cache / "triton")


def test_training_keys_compiled_regions_by_kernel_not_by_side_table_position(
    tmp_path: Path, tiny_qwen2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train() applies compile_keys' fix before any model is built (test_compile_keys.py shows
    what it changes)."""
    from torch._functorch._aot_autograd.autograd_cache import AOTAutogradCachePickler

    from bootstrap.train import compile_keys

    # An earlier in-process train() may have applied the fix: without its mark, train() must
    # apply it again; monkeypatch then puts the class back as it was before this test.
    monkeypatch.delattr(AOTAutogradCachePickler, compile_keys._PATCHED, raising=False)
    monkeypatch.setattr(
        AOTAutogradCachePickler, "reducer_override", AOTAutogradCachePickler.reducer_override
    )
    ws = make_workspace(tmp_path / "ws", tiny_qwen2_dir)
    train(make_plan(ws, max_steps=1, save_steps=1), ws, show_progress=False)
    assert getattr(AOTAutogradCachePickler, compile_keys._PATCHED) is True


def test_samples_show_the_question_answered_without_and_with_the_lora(flow: dict[str, Any]) -> None:
    text = flow["ws"].samples.read_text()
    assert "How many r's are in strawberry?" in text
    assert "## Without LoRA (base model)" in text and "## With the trained LoRA" in text
    assert "max_tokens 8" in text and "after 4 GRPO steps" in text


def test_train_again_resumes_and_continues_the_step_count(flow: dict[str, Any]) -> None:
    second: TrainResult = flow["second"]
    ws: Workspace = flow["ws"]
    assert second.resumed_from == ws.checkpoints / "checkpoint-2"
    assert (second.steps, second.already_done) == (4, False)
    assert [json.loads(line)["step"] for line in flow["metrics_after_second"].splitlines()] == [
        1,
        2,
        3,
        4,
    ]
    state = trainer_state(ws.checkpoints / "checkpoint-4")
    assert state["global_step"] == 4 and state["max_steps"] == 4
    # the resumed trainer carried the first run's history: steps 1-2 came from checkpoint-2
    assert [h["step"] for h in state["log_history"] if "reward" in h] == [1, 2, 3, 4]
    # and the adapter moved on from the 2-step one
    assert (ws.lora / "adapter_model.safetensors").read_bytes() != flow["after_first"]["lora_bytes"]


def test_a_finished_run_is_not_trained_again(flow: dict[str, Any]) -> None:
    third: TrainResult = flow["third"]
    ws: Workspace = flow["ws"]
    assert third.already_done and third.steps == 4
    assert third.resumed_from == ws.checkpoints / "checkpoint-4"
    assert flow["third_seconds"] < 5  # no model load, no step
    assert ws.metrics.read_text() == flow["metrics_after_second"]


def test_a_finished_run_whose_lora_was_lost_takes_it_from_the_final_checkpoint(
    tmp_path: Path, flow: dict[str, Any]
) -> None:
    src: Workspace = flow["ws"]
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(src.root, ws.root)
    shutil.rmtree(ws.lora)
    result = train(make_plan(ws, max_steps=4, save_steps=2), ws, show_progress=False)
    assert result.already_done
    final = ws.checkpoints / "checkpoint-4"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json"):
        assert (ws.lora / name).read_bytes() == (final / name).read_bytes()


def test_adapter_saves_a_kill_cut_short_are_cleared_and_the_lora_is_readable(
    tmp_path: Path, flow: dict[str, Any]
) -> None:
    src: Workspace = flow["ws"]
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(src.root, ws.root)
    (ws.root / ".lora.k1ll3d.tmp").mkdir()  # what a kill -9 during the save leaves
    shutil.rmtree(ws.lora)
    train(make_plan(ws, max_steps=4, save_steps=2), ws, show_progress=False)
    assert not list(ws.root.glob(".lora.*"))
    for path in (ws.lora, *ws.lora.iterdir()):  # a second user of the workspace can read it
        assert path.stat().st_mode & 0o044 == 0o044, oct(path.stat().st_mode)


def test_sigterm_saves_a_checkpoint_exits_130_and_the_run_resumes(
    tmp_path: Path, tiny_qwen2_dir: Path
) -> None:
    ws = make_workspace(tmp_path / "ws", tiny_qwen2_dir)
    # A long run with no periodic checkpoint: only the signal can produce one.
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from bootstrap.errors import BootstrapError
        from bootstrap.workspace import Workspace
        from bootstrap.train.grpo import train
        from tests.test_train import make_plan
        ws = Workspace(Path({str(ws.root)!r}))
        try:
            train(make_plan(ws, max_steps=200, save_steps=200), ws, show_progress=False)
        except BootstrapError as exc:
            print(exc, file=sys.stderr)
            sys.exit(exc.exit_code)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
            ),
        },
    )
    try:
        wait_until(lambda: metric_steps(ws), within_s=120, what="training step", alive=proc)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    checkpoint = last_checkpoint(ws.checkpoints)
    assert checkpoint is not None, stderr
    step = trainer_state(checkpoint)["global_step"]
    assert checkpoint.name == f"checkpoint-{step}" and step < 200
    assert f"checkpoint saved at step {step}" in stderr
    assert "again to resume from it" in stderr  # says how to resume (the CLI names the command)
    assert metric_steps(ws) == list(range(1, step + 1))
    assert not ws.lora.exists()  # an interrupted run has no final adapter

    resumed = train(make_plan(ws, max_steps=step + 1, save_steps=200), ws, show_progress=False)
    assert resumed.resumed_from == checkpoint and resumed.steps == step + 1
    assert metric_steps(ws) == list(range(1, step + 2))


def test_a_trainer_failure_is_training_failed_naming_the_kept_checkpoint(
    tmp_path: Path, tiny_qwen2_dir: Path
) -> None:
    ws = make_workspace(tmp_path / "ws", tiny_qwen2_dir)
    weights = ws.model_dir(MODEL_ID) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated download
    with pytest.raises(TrainingFailed) as caught:
        train(make_plan(ws, max_steps=2), ws, show_progress=False)
    assert caught.value.exit_code == 5
    assert "no checkpoint was written yet" in str(caught.value)
    assert "again to resume from the last checkpoint" in str(caught.value)


def test_a_missing_model_says_to_fetch(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    with pytest.raises(ConfigError, match="grpo-bootstrap fetch"):
        train(make_plan(ws, max_steps=2), ws, show_progress=False)


# --- the pieces, on real files and TRL's real config class ------------------------------------


def test_the_grpo_config_carries_the_recipe_and_falls_back_from_8bit_adam_on_cpu(
    tmp_path: Path,
) -> None:
    from trl import GRPOConfig

    settings = make_plan(Workspace(tmp_path)).require_training()
    settings = settings.model_copy(update={"optim": "adamw_8bit"})  # the notebook's, as on GPU
    kwargs = grpo_config_kwargs(settings, output_dir=tmp_path, cuda=False, bitsandbytes=False)
    args = GRPOConfig(**kwargs)  # every name must be a real TRL 1.15 / transformers 5 field
    assert args.optim == "adamw_torch"
    assert (args.learning_rate, args.adam_beta1, args.adam_beta2) == (5e-6, 0.9, 0.99)
    assert (args.weight_decay, args.warmup_steps, args.max_grad_norm) == (0.1, 0.1, 0.1)
    assert args.lr_scheduler_type == "cosine" and args.beta == RECIPE_BETA
    assert (args.temperature, args.loss_type) == (0.9, "grpo")  # TRL 0.14's sampling and loss
    assert args.vllm_importance_sampling_correction is False  # TRL 0.14 had none; 1.x: on
    assert (args.bf16, args.fp16) == (False, False)  # cpu-smoke is fp32; TRL would default bf16
    assert args.num_generations == 2 and args.generation_batch_size == 2
    assert args.report_to == []  # "none": no wandb, no tensorboard
    assert args.ddp_find_unused_parameters is False  # the LoRA is used whole by every forward
    on_gpu = grpo_config_kwargs(
        settings.model_copy(update={"dtype": "bf16"}),
        output_dir=tmp_path,
        cuda=True,
        bitsandbytes=True,
    )
    assert on_gpu["optim"] == "adamw_8bit" and on_gpu["bf16"] and not on_gpu["fp16"]


def test_cpu_threads_sets_torchs_threads_and_continues_the_run(tmp_path: Path) -> None:
    import torch

    from bootstrap.pipeline.state import fingerprints
    from bootstrap.train.backends import limit_cpu_threads

    ws = Workspace(tmp_path)
    default = make_plan(ws)
    one = make_plan(ws, cpu_threads=1)
    assert one.require_training().cpu_threads == 1
    # Where the run goes and how fast, not what a step computes: the same run continues.
    assert fingerprints(one) == fingerprints(default)
    assert fingerprints(make_plan(ws, learning_rate=1e-5)) != fingerprints(default)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert limit_cpu_threads(default.require_training()) is None
        assert torch.get_num_threads() == 2
        assert limit_cpu_threads(one.require_training()) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_last_checkpoint_skips_a_save_that_was_cut_short(tmp_path: Path) -> None:
    for step, complete in ((2, True), (4, True), (6, False)):
        path = tmp_path / f"checkpoint-{step}"
        path.mkdir()
        if complete:
            (path / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-10.tmp").mkdir()  # not a checkpoint name
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert last_checkpoint(tmp_path / "missing") is None


def test_prune_metrics_drops_steps_the_resumed_run_will_redo(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "reward": s / 10}) + "\n" for s in (1, 2, 3, 4)))
    assert prune_metrics(path, keep_through_step=2) == 2
    assert [line["step"] for line in read_metrics(path)] == [1, 2]
    assert prune_metrics(path, keep_through_step=2) == 0


def test_stop_request_restores_the_previous_signal_handlers() -> None:
    def mine(signum: int, frame: Any) -> None:
        raise AssertionError("not expected to run")

    before = signal.signal(signal.SIGTERM, mine)
    try:
        request = StopRequest()
        with request.installed():
            assert signal.getsignal(signal.SIGTERM) == request._handle
            os.kill(os.getpid(), signal.SIGTERM)  # handled: sets the flag, no exit
            time.sleep(0.05)
            assert request and request.signal_name == "SIGTERM"
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.parametrize("mode", ["terminal", "log", "off"])
def test_the_metrics_callback_writes_trl_logs_as_one_line_and_shows_progress(
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    from transformers import TrainerControl, TrainerState

    from bootstrap.train.metrics import metrics_callback

    if mode == "terminal":
        monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: treat stderr as a terminal
    caplog.set_level(logging.INFO, logger="bootstrap.train.metrics")
    path = tmp_path / "metrics.jsonl"
    callback = metrics_callback(path, completions_per_step=4, show_progress=mode != "off")
    state, control = TrainerState(max_steps=3, is_world_process_zero=True), TrainerControl()
    callback.on_train_begin(None, state, control)
    callback.on_step_begin(None, state, control)
    time.sleep(0.05)
    state.global_step = 1
    callback.on_step_end(None, state, control)
    logs = {  # what TRL's GRPOTrainer.log hands over (a subset)
        "loss": 0.01, "reward": 1.25, "reward_std": 0.5, "kl": 0.002,
        "rewards/xmlcount/mean": 0.25, "rewards/correctness/mean": 1.0,
        "rewards/xmlcount/std": 0.1, "completions/mean_length": 100.0,
    }  # fmt: skip
    callback.on_log(None, state, control, logs=logs)
    callback.on_log(None, state, control, logs={"train_runtime": 3.0})  # the end summary: no line
    callback.on_train_end(None, state, control)

    (line,) = read_metrics(path)
    assert line["step"] == 1 and line["reward"] == 1.25 and line["kl"] == 0.002
    assert line["rewards/xmlcount/mean"] == 0.25 and line["rewards/correctness/mean"] == 1.0
    assert "rewards/xmlcount/std" not in line
    assert line["step_seconds"] >= 0.05
    assert line["completion_tokens_per_s"] == pytest.approx(4 * 100.0 / line["step_seconds"])
    stderr = capfd.readouterr().err
    assert ("reward 1.250" in stderr and "1/3" in stderr) is (mode == "terminal")
    assert ("GRPO step 1/3: reward 1.250" in caplog.text) is (mode == "log")


def test_unsloth_asked_for_where_it_does_not_import_is_environment_unfit(
    tmp_path: Path, tiny_qwen2_dir: Path
) -> None:
    ws = make_workspace(tmp_path / "ws", tiny_qwen2_dir)
    with pytest.raises(EnvironmentUnfit, match="unsloth does not import") as caught:
        train(make_plan(ws, max_steps=2, backend="unsloth"), ws, show_progress=False)
    assert caught.value.exit_code == 3 and "--backend trl" in str(caught.value)


def test_unsloth_chosen_automatically_falls_back_to_trl_when_it_does_not_import(
    tmp_path: Path,
) -> None:
    from bootstrap.planning.plan import BackendChoice
    from bootstrap.train.backends import make_backend

    settings = make_plan(Workspace(tmp_path)).require_training()
    choice = BackendChoice(
        name="unsloth", generation="vllm", reason="CUDA GPU and unsloth installed"
    )
    backend = make_backend(choice, "auto", "auto", settings, tmp_path)
    assert (backend.name, backend.generation) == ("trl", "hf")
    assert "unsloth does not import" in backend.reason


def test_importing_the_training_modules_leaves_torch_transformers_and_trl_unloaded() -> None:
    # unsloth must be imported before them; the train stage decides when, not an import.
    code = (
        "import sys, bootstrap.train.grpo, bootstrap.train.backends, bootstrap.train.metrics, "
        "bootstrap.train.samples; "
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'peft', 'unsloth') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_long_prompts_are_dropped_whole_or_cut_from_the_left_as_the_recipe_says(
    smollm2_dir: Path,
) -> None:
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
    system = {"role": "system", "content": "Answer in XML."}
    short = [system, {"role": "user", "content": "What is 2 + 2?"}]
    long = [system, {"role": "user", "content": "Count the sheep. " * 80}]
    dataset = Dataset.from_list([{"prompt": short}, {"prompt": long}])
    short_len, long_len = grpo.prompt_lengths(dataset, tokenizer)
    limit = (short_len + long_len) // 2

    kept = grpo.filter_long_prompts(dataset, tokenizer, limit)
    assert [row["prompt"] for row in kept] == [short]  # the short one stays as messages

    cut = grpo.truncate_long_prompts(dataset, tokenizer, limit)
    texts = [row["prompt"] for row in cut]
    assert all(isinstance(text, str) for text in texts)
    assert "Answer in XML." in texts[0]  # within the limit: the whole chat text
    assert "Answer in XML." not in texts[1]  # the left cut takes the system prompt first
    assert texts[1].rstrip().endswith("assistant")  # and keeps the generation prompt
    assert len(tokenizer(texts[1], add_special_tokens=False)["input_ids"]) <= limit + 1

    with pytest.raises(ConfigError, match="max_prompt_length"):
        grpo.filter_long_prompts(dataset, tokenizer, short_len - 1)
