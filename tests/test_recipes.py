"""Recipes as files: the seed's models, each with the settings its notebook used, the notebook
itself exactly, and a plan that refuses a model its card cannot hold, saying what would.

Plans are made for realistic cards through the fake nvidia-smi of tests/fakes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from bootstrap.cli import main
from bootstrap.config import read_recipe, recipe_names
from tests.fakes.nvidia_smi import install_nvidia_smi

SEED_MODELS = {
    "qwen2.5-3b": "Qwen/Qwen2.5-3B-Instruct",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B-Instruct",
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B-Instruct",
    "phi-4": "microsoft/phi-4",
    "mistral-7b": "mistralai/Mistral-7B-Instruct-v0.3",
}


@pytest.fixture
def card(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def install(name: str) -> None:
        install_nvidia_smi(tmp_path / "bin", [name])
        monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")

    return install


def plan(tmp_path: Path, *args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(main, ["--json", "--workspace", str(tmp_path / "ws"), *args])
    return result.exit_code, json.loads(result.stdout)


def test_every_seed_model_has_a_recipe_with_what_the_plan_needs() -> None:
    assert set(SEED_MODELS) | {"notebook"} <= set(recipe_names())
    for name, model in SEED_MODELS.items():
        recipe = read_recipe(name)
        assert recipe.about and recipe.chat_template and recipe.model_facts is not None
        assert recipe.values.get("model", "Qwen/Qwen2.5-3B-Instruct") == model


@pytest.mark.parametrize("name", sorted(SEED_MODELS))
def test_every_seed_model_fits_a_16gb_card_as_its_notebook_claims(
    tmp_path: Path, card, name: str
) -> None:
    card("T4")
    code, doc = plan(tmp_path, "plan", "--offline", "--recipe", name)
    assert code == 0, doc
    assert doc["recipe"] == name and doc["profile"]["profile"]["name"] == "gpu-16gb"
    assert doc["training"] is not None and doc["fit"]["fits"], doc["fit"]
    assert doc["fit"]["weights_gib"] < doc["fit"]["vllm_gib"]


def test_a_recipe_fills_its_profile_settings_and_the_user_still_wins(tmp_path: Path, card) -> None:
    card("T4")
    _, doc = plan(tmp_path, "plan", "--offline", "--recipe", "llama-3.1-8b")
    t = doc["training"]
    assert (
        t["lora_rank"],
        t["num_generations"],
        t["max_seq_length"],
        t["gpu_memory_utilization"],
    ) == (32, 6, 512, 0.6)
    assert t["per_device_train_batch_size"] == 6  # one prompt's group, as the notebook ran
    _, mine = plan(
        tmp_path, "--set", "num_generations=4", "plan", "--offline", "--recipe", "llama-3.1-8b"
    )
    assert (
        mine["training"]["num_generations"],
        mine["training"]["per_device_train_batch_size"],
    ) == (4, 4)
    assert mine["config_sources"]["model"] == "recipe llama-3.1-8b"


def test_a_model_the_card_cannot_hold_is_refused_with_what_would_do(tmp_path: Path, card) -> None:
    card("T4")
    # Phi-4 fits a T4 as its notebook runs it, not with 16 generations of 1024 tokens.
    greedy = ("--set", "num_generations=16", "--set", "max_seq_length=1024")
    code, doc = plan(tmp_path, *greedy, "plan", "--offline", "--recipe", "phi-4")
    assert code == 0 and doc["training"] is None and not doc["fit"]["fits"]
    refusal = doc["refusal"]
    assert "recipe phi-4 will not fit 15.0 GiB" in refusal and "cannot hold the weights" in refusal
    assert f"needs about {round(doc['fit']['needed_gib'])} GiB" in refusal and "--recipe" in refusal
    assert doc["fit"]["needed_gib"] > 15
    result = CliRunner().invoke(main, ["--workspace", str(tmp_path / "ws"), *greedy,
                                       "train", "--offline", "--recipe", "phi-4"])  # fmt: skip
    assert result.exit_code == 3 and "will not fit" in result.stderr


def test_the_notebook_recipe_trains_as_the_notebook_did(tmp_path: Path, card) -> None:
    card("T4")
    _, doc = plan(tmp_path, "plan", "--offline", "--recipe", "notebook")
    t = doc["training"]
    assert (t["num_generations"], t["optim"], t["temperature"], t["loss_type"]) == (
        8,
        "adamw_8bit",
        0.9,
        "grpo",
    )
    assert t["prompt_truncation"] == "left" and t["system_prompt"].startswith("\nRespond")
    assert doc["task"]["rewards"] == [f"notebook.{n}" for n in
                                      ("xmlcount", "soft_format", "strict_format", "integer_answer", "correctness")]  # fmt: skip
    assert doc["task"]["eval_reward"] == "notebook.correctness"


def test_a_recipe_file_of_ones_own_and_an_unknown_name(tmp_path: Path, card) -> None:
    card("T4")
    mine = tmp_path / "mine.yaml"
    mine.write_text("about: mine\nmodel: me/my-model\ntrain:\n  learning_rate: 1.0e-5\n"
                    "profiles:\n  gpu-16gb: {num_generations: 4}\n")  # fmt: skip
    code, doc = plan(tmp_path, "plan", "--offline", "--recipe", str(mine))
    assert code == 0 and doc["config"]["model"] == "me/my-model"
    assert (doc["training"]["learning_rate"], doc["training"]["num_generations"]) == (1e-5, 4)
    assert doc["fit"] is None  # nothing known of its model's size: no estimate, no refusal
    code, doc = plan(tmp_path, "plan", "--offline", "--recipe", "gpt-17")
    assert code == 2 and "recipe 'gpt-17' not found" in doc["error"] and "phi-4" in doc["error"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("profiles:\n  gpu-16gb: {model: x}\n")
    code, doc = plan(tmp_path, "plan", "--offline", "--recipe", str(bad))
    assert code == 2 and "profiles.gpu-16gb.model is not a training setting" in doc["error"]
