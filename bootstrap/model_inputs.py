"""The base model and the trained LoRA adapter as later stages find them in the workspace.

eval and export both start from these two directories; each check names the stage that makes
the missing piece, so the error says what to run next.
"""

from __future__ import annotations

from pathlib import Path

from bootstrap.errors import ConfigError
from bootstrap.planning.plan import Plan
from bootstrap.task.prompts import SYSTEM_PROMPT
from bootstrap.workspace import ADAPTER_FILES, Workspace


def base_model_dir(plan: Plan, workspace: Workspace) -> Path:
    """The fetched base model (a safetensors HF directory), or ConfigError naming `fetch`."""
    path = workspace.model_dir(plan.config.model)
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"base model {plan.config.model} not found in {path}",
            hint="run `grpo-bootstrap fetch` first",
        )
    return path


def adapter_dir(workspace: Workspace) -> Path:
    """The trained PEFT adapter directory, or ConfigError naming `train`."""
    path = workspace.lora
    missing = [name for name in ADAPTER_FILES if not (path / name).is_file()]
    if missing:
        raise ConfigError(
            f"no trained LoRA adapter in {path} (missing {', '.join(missing)})",
            hint="run `grpo-bootstrap train` first",
        )
    return path


def recipe_system_prompt(plan: Plan) -> str:
    """The system prompt the model was trained with: the config's, else the recipe's XML prompt."""
    train = plan.training or plan.config.train
    return train.system_prompt or SYSTEM_PROMPT
