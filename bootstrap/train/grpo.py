"""Build and run the GRPO trainer: checkpoints, resume, signals, the saved LoRA and samples.

Contract of `train()` (what `grpo-bootstrap train` and `run` rely on):
- Checkpoints go to <workspace>/checkpoints/checkpoint-<step> every `save_steps` steps, at the
  last step, and when SIGTERM/SIGINT arrives (then it raises Interrupted, exit 130).
- Calling it again resumes from the last complete checkpoint (one with trainer_state.json):
  the global step continues and `max_steps` keeps its meaning (total steps, not steps more).
- A finished run (last checkpoint at or past max_steps and <workspace>/lora/ complete) is not
  trained again: `train` returns at once with `already_done=True`.  If the run finished but the
  process died before the LoRA was written, the adapter is taken from the final checkpoint.
- <workspace>/metrics.jsonl gets one line per step; lines of steps a resumed run redoes
  (logged after the checkpoint it resumes from) are dropped first, so no step appears twice.
- Anything the trainer raises becomes TrainingFailed (exit 5); the checkpoints stay.

Nothing here imports torch, transformers or trl at module level: the unsloth backend must be
imported before them (see backends.py).
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from bootstrap import constants as C
from bootstrap.caches import workspace_caches
from bootstrap.config import TrainConfig
from bootstrap.constants import EnvironmentScope
from bootstrap.errors import BootstrapError, ConfigError, Interrupted, TrainingFailed
from bootstrap.launch.signals import stop_signals_to
from bootstrap.planning.plan import Plan
from bootstrap.task.spec import TaskSpec
from bootstrap.train.backends import Backend, make_backend
from bootstrap.train.compile_keys import stabilise_autograd_cache_keys
from bootstrap.train.metrics import metrics_callback, prune_metrics
from bootstrap.train.paged_state import resumed_state_callback
from bootstrap.train.phases import trl_timings
from bootstrap.train.samples import write_samples
from bootstrap.train.tracking import (
    PROJECT,
    tracking_arguments,
    tracking_environment,
    trackio_elsewhere,
)
from bootstrap.workspace import ADAPTER_FILES, TOKENIZER_FILES, Workspace, atomic_dir

log = logging.getLogger(__name__)

# TRL's default KL coefficient when Unsloth's notebook was written (TRL 0.14/0.15).  TRL 1.x
# defaults to 0.0, which drops the KL term and its metric; the recipe keeps it.
RECIPE_BETA = 0.04
# Checkpoints kept on disk: the newest to resume from, one older in case the newest is damaged.
CHECKPOINTS_KEPT = 2
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class TrainResult(BaseModel):
    """What one `train` call did; printed by `train --json`."""

    steps: int  # global step reached
    max_steps: int
    resumed_from: Path | None  # the checkpoint this call resumed from
    already_done: bool  # nothing was trained: the run had finished before
    lora: Path
    metrics: Path
    samples: Path | None  # None when the samples could not be generated (see the log)
    backend: Literal["unsloth", "trl"]
    generation: Literal["vllm", "hf"]
    backend_reason: str  # why this backend and generation path (logged too)
    seconds: float


# --- checkpoints ----------------------------------------------------------------------------


def checkpoint_step(path: Path) -> int:
    match = _CHECKPOINT.match(path.name)
    if match is None:
        raise ValueError(f"{path} is not a checkpoint-<step> directory")
    return int(match.group(1))


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint in `folder`, or None.

    The rule of transformers' get_last_checkpoint (highest checkpoint-<step> directory), plus
    completeness: the Trainer writes trainer_state.json last, so a directory without it is a
    save that was cut short (kill -9, full disk) and is skipped.  Implemented here rather than
    imported because transformers must not be imported before unsloth.
    """
    if not folder.is_dir():
        return None
    found = [p for p in folder.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)]
    for path in sorted(found, key=checkpoint_step, reverse=True):
        if (path / TRAINER_STATE).is_file():
            return path
        log.warning("ignoring incomplete checkpoint %s (no %s)", path, TRAINER_STATE)
    return None


def lora_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in ADAPTER_FILES)


@contextlib.contextmanager
def _lora_dir(dest: Path) -> Iterator[Path]:
    """A directory to save the adapter into; it becomes `dest` only if the adapter is whole."""
    with atomic_dir(dest) as tmp:
        yield tmp
        missing = [name for name in ADAPTER_FILES if not (tmp / name).is_file()]
        if missing:
            raise TrainingFailed(f"saving the LoRA adapter did not write {', '.join(missing)}")


def _remove_leftovers(workspace: Workspace) -> None:
    """Adapter saves cut short by a kill -9 (their temporary directories beside lora/)."""
    for leftover in workspace.root.glob(f".{workspace.lora.name}.*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)


def _lora_from_checkpoint(checkpoint: Path, dest: Path) -> None:
    """Copy the adapter and tokenizer the Trainer saved in `checkpoint` to `dest`."""
    with _lora_dir(dest) as tmp:
        for name in (*ADAPTER_FILES, *TOKENIZER_FILES):
            if (checkpoint / name).is_file():
                shutil.copy2(checkpoint / name, tmp / name)


# --- the trainer's configuration --------------------------------------------------------------


def grpo_config_kwargs(
    settings: TrainConfig,
    *,
    output_dir: Path,
    run_name: str = PROJECT,
    cuda: bool,
    bitsandbytes: bool,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """GRPOConfig keyword arguments for the resolved recipe (TRL 1.15 field names).

    - `max_prompt_length` is not a GRPOConfig field in TRL 1.x (TRL no longer truncates
      prompts); the recipe's limit is applied to the dataset instead (`filter_long_prompts`).
    - adamw_8bit (the notebook's optimiser) needs bitsandbytes and CUDA; elsewhere the
      optimiser is adamw_torch, and the log says why.
    - dtype maps to bf16/fp16 mixed precision; fp32 turns both off (TRL defaults bf16 on).
    - transformers 5 has no `warmup_ratio`; `warmup_steps` below 1 is read as the ratio.
    - `beta` (KL coefficient) is the recipe's 0.04, see RECIPE_BETA; temperature and the loss
      are the recipe's too (TRL 0.14's 0.9 and its per-sequence mean, "grpo"), not TRL 1.x's,
      and so is the loss on vLLM's samples as drawn (no importance-sampling correction).
    """
    optim = settings.optim
    if "8bit" in optim and not (cuda and bitsandbytes):
        log.info(
            "optimiser %s needs bitsandbytes on CUDA (%s): using adamw_torch",
            optim,
            "no CUDA" if not cuda else "bitsandbytes not installed",
        )
        optim = "adamw_torch"
    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir),
        "learning_rate": settings.learning_rate,
        "adam_beta1": settings.adam_beta1,
        "adam_beta2": settings.adam_beta2,
        "weight_decay": settings.weight_decay,
        # transformers 5 folded warmup_ratio into warmup_steps: a float below 1 is a ratio.
        "warmup_steps": settings.warmup_ratio if settings.warmup_ratio < 1 else settings.max_steps,
        "lr_scheduler_type": settings.lr_scheduler_type,
        "optim": optim,
        "logging_steps": settings.logging_steps,
        "per_device_train_batch_size": settings.per_device_train_batch_size,
        "gradient_accumulation_steps": settings.gradient_accumulation_steps,
        "num_generations": settings.num_generations,
        "max_completion_length": settings.max_completion_length,
        "max_steps": settings.max_steps,
        "save_strategy": "steps",
        "save_steps": settings.save_steps,
        "save_total_limit": CHECKPOINTS_KEPT,
        "max_grad_norm": settings.max_grad_norm,
        "bf16": settings.dtype == "bf16",
        "fp16": settings.dtype == "fp16",
        "seed": settings.seed,
        "beta": RECIPE_BETA,
        "temperature": settings.temperature,
        "loss_type": settings.loss_type,
        # The recipe's TRL (0.14/0.15) used vLLM's samples as they came; TRL >= 0.22 reweights
        # them by the training policy's probabilities, one more forward pass a step.  Unsloth's
        # trainer turns that off too, so both backends train the recipe's loss.
        "vllm_importance_sampling_correction": False,
        **tracking_arguments(settings.report_to, run_name),
        # Every LoRA weight takes part in each forward.  For a PeftModel (not a
        # PreTrainedModel) transformers would turn DDP's unused-parameter search on: one more
        # walk of the autograd graph per step, and a warning from every rank.
        "ddp_find_unused_parameters": False,
        "disable_tqdm": True,  # our own progress bar (metrics.py) replaces the Trainer's
    }
    kwargs.update(overrides or {})
    return kwargs


def prompt_lengths(dataset: Any, tokenizer: Any) -> list[int]:
    """Each row's chat-formatted prompt, in tokens, as the model will see it."""
    return [len(_prompt_ids(tokenizer, row["prompt"])) for row in dataset]


def _prompt_ids(tokenizer: Any, prompt: list[dict[str, str]]) -> list[int]:
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def truncate_long_prompts(dataset: Any, tokenizer: Any, max_prompt_length: int) -> Any:
    """Every prompt as chat-formatted text, those longer than `max_prompt_length` tokens cut to
    their last ones, as TRL 0.14 did for the notebook (prompt_truncation: left).  The cut takes
    the system prompt first; the completions are then plain text, not messages."""

    def cut(row: dict[str, Any]) -> dict[str, Any]:
        ids = _prompt_ids(tokenizer, row["prompt"])
        return {"prompt": tokenizer.decode(ids[-max_prompt_length:])}

    return dataset.map(cut)


def filter_long_prompts(dataset: Any, tokenizer: Any, max_prompt_length: int) -> Any:
    """Drop rows whose chat-formatted prompt exceeds `max_prompt_length` tokens.

    TRL 1.x has no max_prompt_length (it used to cut prompts from the left, which removes the
    system prompt the rewards depend on); dropping the few long GSM8K questions keeps every
    prompt whole.  Raises ConfigError if nothing is left.
    """

    def fits(row: dict[str, Any]) -> bool:
        return len(_prompt_ids(tokenizer, row["prompt"])) <= max_prompt_length

    kept = dataset.filter(fits)
    dropped = len(dataset) - len(kept)
    if dropped:
        log.info(
            "dropped %d of %d prompts longer than %d tokens",
            dropped,
            len(dataset),
            max_prompt_length,
        )
    if len(kept) == 0:
        raise ConfigError(
            f"every training prompt is longer than max_prompt_length {max_prompt_length} tokens",
            hint="raise max_prompt_length (and max_seq_length)",
        )
    return kept


# --- signals ----------------------------------------------------------------------------------


class StopRequest:
    """Set by SIGTERM/SIGINT; the trainer checks it at the end of each step.

    The first signal asks for a checkpoint and a clean stop.  A second SIGINT (Ctrl-C twice)
    raises KeyboardInterrupt at once, for a user who does not want to wait for the step.

    The ranks of a multi-process launch also watch `stop_file`: the launching process writes
    the signal's name there rather than signalling them, so that no launcher's kill timer runs
    while they finish the step and save.
    """

    def __init__(self, stop_file: Path | None = None) -> None:
        self.signal_name: str | None = None
        self.stop_file = stop_file

    def __bool__(self) -> bool:
        return self.signal_name is not None

    def agreed(self) -> bool:
        """Whether this rank or any other was asked to stop; a collective (see `any_rank`)."""
        if self.signal_name is None and self.stop_file is not None and self.stop_file.is_file():
            self.signal_name = self.stop_file.read_text(encoding="utf-8").strip() or "stop"
        if any_rank(bool(self)) and self.signal_name is None:
            self.signal_name = "a stop signal (to another rank)"
        return bool(self)

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = name
        log.warning("%s received: saving a checkpoint at the end of this step, then stopping", name)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Handle SIGTERM and SIGINT inside the block; the previous handlers come back after.

        Outside the main thread Python cannot install handlers; the run then has no graceful
        stop (the log says so) but still checkpoints every save_steps.
        """
        with stop_signals_to(self._handle) as installed:
            if not installed:
                log.info("not in the main thread: SIGTERM/SIGINT will not trigger a checkpoint")
            yield self


def any_rank(flag: bool) -> bool:
    """`flag` OR-ed over every rank (all_reduce MAX) when torch.distributed runs, else `flag`.

    A collective: every rank must call it at the same point.  Ranks get a signal at slightly
    different moments; if one stopped at step k and another went on to k+1, the checkpoint save
    (itself collective) would wait forever.  Agreeing at each step end stops them all at k.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    on_gpu = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def stop_callback(request: StopRequest) -> Any:
    """A TrainerCallback that turns a StopRequest into 'save a checkpoint now, then stop', on
    every rank at the same step (see `any_rank`)."""
    from transformers import TrainerCallback

    class SignalCheckpoint(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if request.agreed():
                control.should_save = True
                control.should_training_stop = True
            return control

    return SignalCheckpoint()


# --- train --------------------------------------------------------------------------------------


def _kept_message(workspace: Workspace) -> str:
    last = last_checkpoint(workspace.checkpoints)
    if last is None:
        return "no checkpoint was written yet"
    return f"the last checkpoint is kept in {last} (step {checkpoint_step(last)})"


def _prepare_dataset(
    settings: TrainConfig, task: TaskSpec, workspace: Workspace, tokenizer: Any
) -> Any:
    from bootstrap.task.dataset import load_split
    from bootstrap.task.prompts import SYSTEM_PROMPT

    dataset = load_split(
        workspace.split_path("train"),
        system_prompt=settings.system_prompt or SYSTEM_PROMPT,
        one_shot=settings.one_shot,
        answer_format=task.columns.answer_format,
    )
    if settings.prompt_truncation == "left":
        return truncate_long_prompts(dataset, tokenizer, settings.max_prompt_length)
    return filter_long_prompts(dataset, tokenizer, settings.max_prompt_length)


def _run_trainer(
    settings: TrainConfig,
    task: TaskSpec,
    workspace: Workspace,
    backend: Backend,
    resume: Path | None,
    show_progress: bool,
    caches: EnvironmentScope,
    overrides: dict[str, Any] | None = None,
    stop_file: Path | None = None,
) -> tuple[Any, Any, int]:
    """Load, train (resuming from `resume`), stop on a signal. Returns (model, tokenizer, step).

    `caches` are the compile-cache variables training must use (see caches.py); `overrides`
    are GRPOConfig fields the launcher decides (vLLM server mode); `stop_file` is the
    launcher's stop request (see StopRequest)."""
    from bootstrap.task.registry import load_rewards
    from bootstrap.train.backends import (
        bitsandbytes_usable,
        cuda_available,
        limit_cpu_threads,
        limit_gpu_memory,
    )

    request = StopRequest(stop_file)
    with request.installed():
        limit_gpu_memory(settings)
        limit_cpu_threads(settings)
        model, tokenizer, peft_config = backend.load()
        _put_back(caches)  # an in-process vLLM engine re-points Triton and Inductor
        from transformers import PrinterCallback
        from trl import GRPOConfig  # after backend.load(): unsloth (if used) is imported first

        dataset = _prepare_dataset(settings, task, workspace, tokenizer)
        args = GRPOConfig(
            **grpo_config_kwargs(
                settings,
                output_dir=workspace.checkpoints,
                run_name=workspace.root.resolve().name,
                cuda=cuda_available(),
                bitsandbytes=bitsandbytes_usable(),
                overrides={**backend.config_overrides(), **(overrides or {})},
            ),
            reward_weights=task.reward_weights,
            dataloader_pin_memory=cuda_available(),
            # Without CUDA, ranks of a multi-process launch need the Trainer to say "CPU" so
            # that accelerate joins them over gloo; a single CPU process is unaffected.
            use_cpu=not cuda_available(),
        )
        metrics = metrics_callback(
            workspace.metrics,
            completions_per_step=args.generation_batch_size,
            show_progress=show_progress,
        )
        trainer = backend.trainer_class()(
            model=model,
            processing_class=tokenizer,
            reward_funcs=load_rewards(task.rewards),
            args=args,
            train_dataset=dataset,
            peft_config=peft_config,
            callbacks=[metrics, stop_callback(request), resumed_state_callback()],
        )
        # With tqdm off the Trainer prints every log dict; metrics.jsonl and our bar replace it.
        trainer.remove_callback(PrinterCallback)
        model = trainer.model  # the PeftModel, whichever side attached the LoRA
        if request.agreed():
            raise Interrupted(
                f"{request.signal_name} received before training started; "
                f"{_kept_message(workspace)}",
                again="to resume",
            )
        try:
            with trl_timings(metrics.clock):
                trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        finally:
            metrics.close()
        step = int(trainer.state.global_step)
        if request:
            raise Interrupted(
                f"{request.signal_name} received: checkpoint saved at step {step} in "
                f"{workspace.checkpoints / f'checkpoint-{step}'}",
                again="to resume from it",
            )
    return model, tokenizer, step


def train(plan: Plan, workspace: Workspace, *, show_progress: bool = True) -> TrainResult:
    """Run (or resume, or recognise as finished) the GRPO job the plan describes.

    Raises:
        EnvironmentUnfit: the machine cannot train (plan refusal, unsloth/bitsandbytes missing
            where they were required).
        ConfigError: the model or the GSM8K split is not in the workspace (run `fetch`).
        Interrupted: SIGTERM/SIGINT; the checkpoint saved and its step are in the message.
        TrainingFailed: the trainer raised; the last checkpoint is kept.
    """
    started = time.perf_counter()
    settings = plan.require_training()
    model_dir = workspace.model_dir(plan.config.model)
    if not (model_dir / "config.json").is_file():
        raise ConfigError(
            f"model {plan.config.model} is not in the workspace ({model_dir})",
            hint="run `grpo-bootstrap fetch` first",
        )
    _remove_leftovers(workspace)
    resume = last_checkpoint(workspace.checkpoints)
    done_step = checkpoint_step(resume) if resume else 0

    def result(**fields: Any) -> TrainResult:
        base: dict[str, Any] = {
            "max_steps": settings.max_steps,
            "resumed_from": resume,
            "lora": workspace.lora,
            "metrics": workspace.metrics,
            "backend": plan.backend.name,
            "generation": plan.backend.generation,
            "backend_reason": plan.backend.reason,
            "seconds": time.perf_counter() - started,
        }
        return TrainResult(**{**base, **fields})

    if resume is not None and done_step >= settings.max_steps:
        if not lora_complete(workspace.lora):
            log.info("run finished at step %d but the LoRA was not saved: taking it from %s",
                     done_step, resume)  # fmt: skip
            _lora_from_checkpoint(resume, workspace.lora)
        log.info("training already finished (step %d of max_steps %d); LoRA in %s",
                 done_step, settings.max_steps, workspace.lora)  # fmt: skip
        samples = workspace.samples if workspace.samples.is_file() else None
        return result(steps=done_step, already_done=True, samples=samples)

    if resume is not None:
        log.info("resuming from %s (step %d of %d)", resume, done_step, settings.max_steps)
        dropped = prune_metrics(workspace.metrics, keep_through_step=done_step)
        if dropped:
            log.info(
                "dropped %d metrics line(s) after step %d: those steps run again",
                dropped,
                done_step,
            )
    elif workspace.metrics.exists():
        prune_metrics(workspace.metrics, keep_through_step=0)

    # Before unsloth is imported; the ranks of a launch inherit them.  Unsloth and some libraries
    # print banners on stdout, which `--json` reserves for its document.
    with (
        workspace_caches(workspace.cache) as caches,
        _trackers(plan, workspace),
        contextlib.redirect_stdout(sys.stderr),
    ):
        if plan.launch is not None and plan.launch.launcher == "accelerate":
            from bootstrap.launch.supervisor import run_distributed

            outcome = run_distributed(plan, workspace, resume=resume, show_progress=show_progress)
            return result(
                steps=outcome.step or 0, already_done=False, samples=outcome.samples,
                backend_reason=outcome.backend_reason or plan.backend.reason,
            )  # fmt: skip
        backend = _make_backend(plan, settings, model_dir, caches)
        with _training_errors(workspace):
            model, tokenizer, step = _run_trainer(
                settings, plan.task, workspace, backend, resume, show_progress, caches
            )
            with _lora_dir(workspace.lora) as tmp:
                backend.save_adapter(model, tokenizer, tmp)
        log.info("LoRA adapter saved to %s", workspace.lora)
        samples = _samples(backend, model, tokenizer, settings, workspace, step)
    return result(
        steps=step, already_done=False, samples=samples,
        backend=backend.name, generation=backend.generation, backend_reason=backend.reason,
    )  # fmt: skip


def train_rank(
    plan: Plan,
    workspace: Workspace,
    *,
    resume: Path | None,
    show_progress: bool,
    overrides: dict[str, Any] | None = None,
    stop_file: Path | None = None,
) -> tuple[int, Path | None, str]:
    """One rank of an `accelerate launch` (bootstrap.train.worker): train with every other
    rank; rank 0 then writes lora/ (from the final checkpoint, which the Trainer saved with
    every rank's help, so ZeRO-3's sharded weights are whole there) and samples.md.

    Returns (step reached, samples.md or None, backend reason).  Raises like `train`.
    """
    settings = plan.require_training()
    main = C.process_rank() == 0
    # The launcher's values, inherited, are read back and kept in place.
    with (
        workspace_caches(workspace.cache) as caches,
        _trackers(plan, workspace),
        contextlib.redirect_stdout(sys.stderr),
    ):
        backend = _make_backend(plan, settings, workspace.model_dir(plan.config.model), caches)
        with _training_errors(workspace):
            model, tokenizer, step = _run_trainer(
                settings, plan.task, workspace, backend, resume, show_progress and main, caches,
                overrides, stop_file,
            )  # fmt: skip
            if main:
                _lora_from_checkpoint(workspace.checkpoints / f"checkpoint-{step}", workspace.lora)
        samples = None
        if main and plan.launch is not None and plan.launch.strategy == "zero3":
            log.warning("ZeRO-3 shards the weights over the ranks: samples.md is not written "
                        "(`grpo-bootstrap eval` measures the trained LoRA)")  # fmt: skip
        elif main:
            log.info("LoRA adapter saved to %s", workspace.lora)
            samples = _samples(backend, model, tokenizer, settings, workspace, step)
    return step, samples, backend.reason


def _trackers(plan: Plan, workspace: Workspace) -> contextlib.AbstractContextManager[Any]:
    """report_to's trackers pointed into the workspace while training (train/tracking.py)."""
    settings = plan.require_training()
    values = tracking_environment(
        settings.report_to, workspace.tracking, offline=plan.config.offline
    )
    elsewhere = trackio_elsewhere(values)
    if elsewhere is not None:
        log.warning("Trackio was imported before training set it up: it writes to %s", elsewhere)
    return C.scoped_environment(values)


def _make_backend(
    plan: Plan, settings: TrainConfig, model_dir: Path, caches: EnvironmentScope
) -> Backend:
    backend = make_backend(plan.backend, plan.config.backend, settings.vllm, settings, model_dir)
    _put_back(caches)  # importing unsloth drops TORCHINDUCTOR_CACHE_DIR
    stabilise_autograd_cache_keys()  # else a relaunch re-traces Unsloth's compiled blocks
    return backend


def _put_back(caches: EnvironmentScope) -> None:
    moved = caches.reassert()
    if moved:
        log.info("put back %s after a library import changed it", ", ".join(moved))


@contextlib.contextmanager
def _training_errors(workspace: Workspace) -> Iterator[None]:
    """Anything but our own errors becomes TrainingFailed (exit 5) or Interrupted (130),
    naming the checkpoint that is kept."""
    try:
        yield
    except BootstrapError:
        raise
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted before a checkpoint could be saved; {_kept_message(workspace)}",
            again="to resume",
        ) from None
    except Exception as exc:
        raise TrainingFailed(
            f"GRPO training failed: {type(exc).__name__}: {exc}; {_kept_message(workspace)}",
            hint=_failure_hint(exc),
            again="to resume from the last checkpoint",
        ) from exc


def _samples(backend: Backend, model: Any, tokenizer: Any, settings: TrainConfig,
             workspace: Workspace, step: int) -> Path | None:  # fmt: skip
    """samples.md; a failure here is logged, not fatal: the adapter is already saved."""
    try:
        return write_samples(
            backend, model, tokenizer, settings,
            lora_dir=workspace.lora, dest=workspace.samples, steps=step,
        )  # fmt: skip
    except Exception as exc:  # samples are a nicety; the trained LoRA must not be lost  # noqa: BLE001
        log.warning(
            "before/after samples failed (%s: %s); the LoRA is saved", type(exc).__name__, exc
        )
        return None


def _failure_hint(exc: BaseException) -> str:
    if "out of memory" in str(exc).lower():
        return "lower num_generations, max_completion_length or gpu_memory_utilization"
    return "fix the cause"
