"""Detection + config -> Plan: everything later stages need, decided once and shown to the user.

No I/O here beyond what detection did: the plan is a pure function of the config and the
machine, so `plan` can be printed, diffed and fingerprinted before a byte is downloaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel

from bootstrap import __version__
from bootstrap.config import (
    DEFAULT_RECIPE,
    JobConfig,
    Recipe,
    TrainConfig,
    read_recipe,
    recipe_names,
)
from bootstrap.detect import Detection
from bootstrap.detect.gpu import GPUReport
from bootstrap.detect.system import importable
from bootstrap.errors import ConfigError, EnvironmentUnfit
from bootstrap.planning.fit import FitEstimate, estimate
from bootstrap.planning.launch import Launch, fit_strategy, resolve_launch
from bootstrap.planning.mirrors import sources_for
from bootstrap.planning.profiles import Profile, ProfileChoice, choose_profile
from bootstrap.planning.sources import Source
from bootstrap.task.spec import TaskSpec, task_of
from bootstrap.workspace import Workspace

# The unsloth backend loads vLLM for generation only on GPUs it supports (Volta and newer).
VLLM_MIN_COMPUTE_CAPABILITY = (7, 0)


class BackendChoice(BaseModel, frozen=True):
    name: Literal["unsloth", "trl"]
    generation: Literal["vllm", "hf"]
    reason: str


class Plan(BaseModel, frozen=True):
    version: str
    config: JobConfig
    config_sources: dict[str, str]
    detection: Detection
    model_sources: list[Source]
    dataset_sources: list[Source]
    profile: ProfileChoice | None
    training: TrainConfig | None  # the recipe with every profile-dependent value filled in
    backend: BackendChoice
    launch: Launch | None = None  # processes, strategy, GPUs; None when training can't run here
    recipe: str = DEFAULT_RECIPE
    task: TaskSpec
    fit: FitEstimate | None = None  # the memory estimate, where the recipe knows its model
    export_formats: list[str]
    refusal: str | None  # why training cannot run here, and what to do instead
    warnings: list[str]

    def require_training(self) -> TrainConfig:
        """The resolved training settings, or exit 3 with the fix when this machine can't train."""
        if self.training is None:
            raise EnvironmentUnfit(self.refusal or "no training profile fits this machine")
        return self.training


def _compute_capability(gpus: GPUReport) -> tuple[int, int] | None:
    caps = [g.compute_capability for g in gpus.gpus if g.compute_capability]
    if not caps:
        return None
    return min(tuple(int(x) for x in cap.split(".")[:2]) for cap in caps)  # type: ignore[return-value]


def choose_backend(
    config: JobConfig, gpus: GPUReport, profile: Profile | None, launch: Launch | None = None
) -> BackendChoice:
    """unsloth on CUDA when it is installed, else trl; vLLM generation where it can run.
    Several processes (or TRL's vLLM server) mean trl: Unsloth's open-source build trains on
    one GPU; asking for unsloth there is a ConfigError.

    Only `find_spec` is used here: importing unsloth takes seconds and grabs the GPU, which
    `plan` must not do.  The train stage imports for real and reports if that fails.
    """
    if launch is not None and launch.launcher == "accelerate":
        why = f"{launch.processes} training process(es)" + (
            " and TRL's vLLM server" if launch.generation_device is not None else ""
        )
        if config.backend == "unsloth":
            raise ConfigError(
                f"backend unsloth with {why}: Unsloth's open-source build trains on one GPU",
                hint="use --backend trl (or auto), or --gpus 1",
            )
        server = launch.generation_device is not None
        return BackendChoice(
            name="trl",
            generation="vllm" if server else "hf",
            reason=f"{why} through accelerate: TRL + PEFT (Unsloth trains on one GPU)"
            + ("; generation by TRL's vLLM server" if server else ""),
        )
    on_gpu = bool(gpus.gpus) and (profile is None or profile.requires_gpu)
    cap = _compute_capability(gpus)
    if config.backend == "trl" or (config.backend == "auto" and not on_gpu):
        why = "requested" if config.backend == "trl" else "no CUDA GPU in use: plain TRL + PEFT"
        return _trl(why, colocate=on_gpu and config.train.vllm == "on", cap=cap)
    if config.backend == "auto" and not importable("unsloth"):
        why = "unsloth is not installed (pip install 'grpo-bootstrap[gpu]'): plain TRL + PEFT"
        return _trl(why, colocate=config.train.vllm == "on", cap=cap)
    why = "requested" if config.backend == "unsloth" else "CUDA GPU and unsloth installed"
    if config.train.vllm == "off":
        return BackendChoice(name="unsloth", generation="hf", reason=f"{why}; vLLM turned off")
    if not importable("vllm"):
        return BackendChoice(
            name="unsloth", generation="hf", reason=f"{why}; vllm not installed: HF generate"
        )
    if cap is not None and cap < VLLM_MIN_COMPUTE_CAPABILITY:
        return BackendChoice(
            name="unsloth",
            generation="hf",
            reason=f"{why}; compute capability {cap[0]}.{cap[1]} is below vLLM's 7.0: HF generate",
        )
    return BackendChoice(name="unsloth", generation="vllm", reason=f"{why}; vLLM fast generation")


def _trl(why: str, *, colocate: bool, cap: tuple[int, int] | None) -> BackendChoice:
    """TRL + PEFT on one process, generating with HF, or with vLLM in TRL's colocate mode (an
    engine in the training process) when `vllm: on` asked for it on a GPU.  Only on request: the
    engine's share of the card is taken from training, which plain TRL users size themselves."""
    if not colocate:
        return BackendChoice(name="trl", generation="hf", reason=why)
    if cap is not None and cap < VLLM_MIN_COMPUTE_CAPABILITY:
        raise ConfigError(
            f"vllm: on, but this GPU's compute capability {cap[0]}.{cap[1]} is below vLLM's 7.0",
            hint="set vllm: auto or off to generate with HF",
        )
    return BackendChoice(
        name="trl", generation="vllm", reason=f"{why}; generation by TRL's vLLM colocate mode"
    )


def resolve_training(
    train: TrainConfig,
    profile: Profile,
    processes: int = 1,
    recipe_settings: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Fill every None in the training settings from the recipe's settings for this profile,
    then from the profile, and keep TRL's batch rule true.

    The per-device batch the profile gives is one prompt's group: num_generations, the recipe's
    where it chose another (the notebooks' batch of 1, which Unsloth raises to a group).  TRL
    needs the generation batch (per-device batch x accumulation x processes) to be a multiple
    of num_generations; a per-device batch from the profile is raised to fit, one the user set
    is theirs, so a misfit is a ConfigError naming what fits.
    """
    chosen = {k: v for k, v in (recipe_settings or {}).items() if getattr(train, k) is None}
    filled = {
        **{n: getattr(profile, n) for n, v in train if v is None and n in Profile.model_fields},
        **chosen,
    }
    if "per_device_train_batch_size" not in chosen and train.per_device_train_batch_size is None:
        filled["per_device_train_batch_size"] = filled.get("num_generations", train.num_generations)
    if filled.get("gpu_memory_utilization") == 0:
        # A CPU profile's 0 vLLM share means "no vLLM", which the config spells None (its range
        # excludes 0): the resolved plan must validate again when a rank reads it back.
        filled["gpu_memory_utilization"] = None
    resolved = train.model_copy(update=filled)
    if resolved.lora_alpha is None:
        resolved = resolved.model_copy(update={"lora_alpha": resolved.lora_rank})
    gens = resolved.num_generations
    per_device = resolved.per_device_train_batch_size
    accumulation = resolved.gradient_accumulation_steps
    if (per_device * accumulation * processes) % gens:
        fits = [b for b in range(1, gens + 1) if (b * accumulation * processes) % gens == 0]
        if train.per_device_train_batch_size is not None:
            raise ConfigError(
                f"the generation batch, per_device_train_batch_size {per_device} x "
                f"{processes} process(es) x gradient_accumulation_steps {accumulation} = "
                f"{per_device * accumulation * processes}, is not a multiple of num_generations "
                f"{gens} (TRL needs whole groups of generations)",
                hint=f"set per_device_train_batch_size to a multiple of {fits[0]}, or change "
                "num_generations or the number of GPUs",
            )
        per_device = -(-per_device // fits[0]) * fits[0]
    completion = min(
        resolved.max_completion_length, resolved.max_seq_length - resolved.max_prompt_length
    )
    if completion < 8:
        raise EnvironmentUnfit(
            f"max_seq_length {resolved.max_seq_length} leaves no room for completions after "
            f"max_prompt_length {resolved.max_prompt_length}",
            hint="raise max_seq_length or lower max_prompt_length",
        )
    return resolved.model_copy(
        update={"per_device_train_batch_size": per_device, "max_completion_length": completion}
    )


def build_plan(
    config: JobConfig,
    detection: Detection,
    config_sources: dict[str, str] | None = None,
    recipe: Recipe | None = None,
) -> Plan:
    """The plan for this job on this machine.  Never raises for a machine that can't train:
    `plan` must still show why; `Plan.require_training()` is where a GPU job refuses.  Raises
    ConfigError for a task that cannot work (task.spec: a missing column, a reward that fails
    on a sample row), which is read from this machine's files: the one I/O besides detection."""
    recipe = recipe or read_recipe(config.recipe)
    _check_trackers(config.train.report_to)
    task = task_of(
        config,
        split=Workspace(config.workspace).split_path("train"),
        recipe_rewards=recipe.reward_set,
    )
    warnings: list[str] = []
    refusal: str | None = None
    choice: ProfileChoice | None
    try:
        choice = choose_profile(detection.gpus, config.profile, config.train.gpu_memory_limit_gib)
    except EnvironmentUnfit as exc:
        choice, refusal = None, str(exc)
    launch: Launch | None = None
    if choice is not None:
        try:
            launch = resolve_launch(
                config.train, detection.gpus, choice.profile.name, config.workspace
            )
        except EnvironmentUnfit as exc:  # shown by `plan`; `train` exits 3 with it
            refusal = str(exc)
    training = (
        resolve_training(
            config.train,
            choice.profile,
            launch.processes,
            recipe.profiles.get(choice.profile.name),
        )
        if choice and launch
        else None
    )
    fit = None
    if (
        training is not None
        and choice is not None
        and choice.profile.requires_gpu
        and recipe.model_facts
    ):
        budget = (
            training.gpu_memory_limit_gib or min(g.memory_mib for g in detection.gpus.gpus) / 1024
        )
        fit = estimate(recipe.model_facts, training, budget)
        if not fit.fits:
            refusal = _too_big(recipe, fit)
            training = None
    backend = choose_backend(config, detection.gpus, choice.profile if choice else None, launch)
    if training is not None and launch is not None:
        training = fit_strategy(training, launch, warnings)
    if training is not None and not detection.gpus.gpus and "8bit" in training.optim:
        # bitsandbytes' 8-bit optimisers are CUDA kernels; say so here rather than at step 1.
        warnings.append(f"optim {training.optim} needs CUDA: adamw_torch is used on this machine")
        training = training.model_copy(update={"optim": "adamw_torch"})
    if detection.cuda.fits is False and detection.cuda.advice:
        warnings.append(detection.cuda.advice)
    region = detection.region
    if config.offline:
        warnings.append("offline: no probes ran; fetch will only use what is in the workspace")
    return Plan(
        version=__version__,
        config=config,
        config_sources=dict(config_sources or {}),
        detection=detection,
        model_sources=sources_for(config, "model", region.region, region.probes),
        dataset_sources=sources_for(config, "dataset", region.region, region.probes),
        profile=choice,
        training=training,
        backend=backend,
        launch=launch,
        recipe=recipe.name,
        task=task,
        fit=fit,
        export_formats=list(config.export.export_formats),
        refusal=refusal,
        warnings=warnings,
    )


# report_to's trackers and the module transformers' callback for each imports.
TRACKER_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


def _check_trackers(report_to: list[str]) -> None:
    """A tracker that is not installed fails here, not after the model has loaded."""
    missing = [t for t in report_to if not importable(TRACKER_MODULES[t])]
    if missing:
        raise ConfigError(
            f"report_to {', '.join(missing)}: not installed on this machine",
            hint="pip install 'grpo-bootstrap[tracking]' (TensorBoard, W&B and Trackio), or "
            "take it out of report_to",
        )


def _too_big(recipe: Recipe, fit: FitEstimate) -> str:
    """Why the model cannot train on this budget, and what would."""
    others = [name for name in recipe_names() if name != recipe.name]
    return (
        f"recipe {recipe.name} will not fit {fit.budget_gib:.1f} GiB of GPU memory: {fit.reason}; "
        f"it needs about {fit.needed_gib:.0f} GiB (a larger card or gpu_memory_limit_gib), or a "
        f"smaller model (--recipe {' / '.join(others)}), or lower num_generations / "
        "max_seq_length"
    )
