"""Where training runs: how many processes on which GPUs, with which strategy, and the command.

One GPU trains in the process that was asked to.  Several GPUs (or machines) train on the trl
backend under `accelerate launch`, each rank re-entering our code through
`bootstrap.train.worker` with the plan resolved here.  Pure: no I/O, no torch; `plan` shows the
result, `train` (bootstrap.launch.supervisor) carries it out.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from bootstrap import constants as C
from bootstrap.config import TrainConfig
from bootstrap.detect.gpu import GPUReport
from bootstrap.detect.system import importable
from bootstrap.errors import ConfigError, EnvironmentUnfit
from bootstrap.workspace import Workspace

Strategy = Literal["single", "ddp", "zero2", "zero3"]
STRATEGY_LABELS: dict[str, str] = {
    "single": "one process",
    "ddp": "DDP",
    "zero2": "DeepSpeed ZeRO-2",
    "zero3": "DeepSpeed ZeRO-3",
}


class Launch(BaseModel, frozen=True):
    """How the training job is spread over processes; shown by `plan`, used by `train`."""

    launcher: Literal["in-process", "accelerate"]
    device: Literal["cuda", "cpu"]
    processes: int  # training processes on every machine together (the world size)
    processes_per_machine: int
    num_machines: int
    machine_rank: int
    strategy: Strategy
    strategy_label: str  # "DDP", "DeepSpeed ZeRO-3", ...
    training_devices: list[str]  # CUDA_VISIBLE_DEVICES entries the ranks here train on
    generation_device: str | None  # where TRL's vLLM server runs (vllm_server), else None
    main_process_ip: str | None
    main_process_port: int
    command: list[str]  # the `accelerate launch` command line; [] when training in-process
    reason: str


def _visible_devices(gpus: GPUReport, environ: Mapping[str, str] | None) -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (CUDA's order)."""
    if not gpus.gpus:
        return []
    visible = C.cuda_visible_devices(environ)
    return visible if visible is not None else [str(g.index) for g in gpus.gpus]


def _gpu_count(train: TrainConfig, visible: list[str], profile_name: str) -> int:
    """GPUs (CPU processes on the cpu-smoke path) per machine; refuses what can't run."""
    if not visible:
        count = 1 if train.gpus == "auto" else train.gpus
        if count > 1 and profile_name != "cpu-smoke":
            raise EnvironmentUnfit(
                f"gpus {count} asked for, but this machine has no CUDA GPU",
                hint="run on a machine with GPUs, or --profile cpu-smoke to test the "
                "multi-process path on CPU processes (gloo)",
            )
        return count
    if train.gpus == "auto":
        return len(visible)
    if train.gpus > len(visible):
        raise EnvironmentUnfit(
            f"gpus {train.gpus} asked for, but {len(visible)} GPU(s) are visible "
            f"({', '.join(visible)})",
            hint=f"use --gpus {len(visible)} or --gpus auto (check CUDA_VISIBLE_DEVICES and "
            "the container's --gpus)",
        )
    return train.gpus


def _check_server(train: TrainConfig, count: int, visible: list[str]) -> None:
    if not train.vllm_server:
        return
    if not visible:
        raise EnvironmentUnfit(
            "vllm_server needs CUDA GPUs (one serves generation, the others train)",
            hint="turn it off (--no-vllm-server) on this machine",
        )
    if train.num_machines > 1:
        raise ConfigError(
            "vllm_server with num_machines > 1 is not supported",
            hint="use --no-vllm-server for multi-machine runs",
        )
    if count < 2:
        error = EnvironmentUnfit if train.gpus == "auto" else ConfigError
        raise error(
            f"vllm_server needs at least 2 GPUs (one serves generation, the others train); "
            f"gpus is {count}",
            hint="use --gpus 2 or more, or --no-vllm-server",
        )
    if not importable("vllm"):
        raise EnvironmentUnfit(
            "vllm_server needs vllm, which is not installed",
            hint="pip install vllm (the version your torch was built for), or --no-vllm-server",
        )


def launch_command(workspace: Path, *, device: str, processes: int) -> list[str]:
    """`accelerate launch` of our worker module, through the interpreter running us (PATH and
    the `accelerate` script do not matter).

    On CPU, accelerate's own MULTI_CPU launcher starts one process unless mpirun is set up;
    `--multi_gpu` picks torch's elastic launcher instead, which starts N processes anywhere, and
    each rank then runs on the CPU with gloo (the Trainer's use_cpu, set by the worker).
    """
    files = Workspace(workspace)
    command = [sys.executable, "-m", "accelerate.commands.launch",
               "--config_file", str(files.accelerate_config)]  # fmt: skip
    if device == "cpu" and processes > 1:
        command.append("--multi_gpu")
    return [*command, "-m", "bootstrap.train.worker", str(files.launch_job)]


def resolve_launch(
    train: TrainConfig,
    gpus: GPUReport,
    profile_name: str,
    workspace: Path,
    environ: Mapping[str, str] | None = None,
) -> Launch:
    """Processes, strategy and devices for this job on this machine.

    Raises:
        EnvironmentUnfit: the machine can't run it (more GPUs asked for than visible, several
            processes without a GPU outside cpu-smoke, vllm or deepspeed not installed).
        ConfigError: the settings contradict each other (vllm_server on one GPU, ZeRO on CPU).
    """
    visible = _visible_devices(gpus, environ)
    count = _gpu_count(train, visible, profile_name)
    _check_server(train, count, visible)
    device: Literal["cuda", "cpu"] = "cuda" if visible else "cpu"
    serving = train.vllm_server
    training_devices = visible[1:count] if serving else visible[:count]
    per_machine = count - 1 if serving else count
    processes = per_machine * train.num_machines
    strategy: Strategy = train.distributed if processes > 1 else "single"
    if strategy in ("zero2", "zero3"):
        if device == "cpu":
            raise ConfigError(
                f"distributed {train.distributed} (DeepSpeed) needs CUDA GPUs",
                hint="the CPU path runs DDP over gloo: --distributed ddp",
            )
        if not importable("deepspeed"):
            raise EnvironmentUnfit(
                f"distributed {train.distributed} needs DeepSpeed, which is not installed",
                hint="pip install deepspeed, or --distributed ddp",
            )
    where = f"{per_machine} process(es) x {train.num_machines} machine(s)"
    if processes == 1:
        reason = f"one {'GPU' if device == 'cuda' else 'CPU'} process"
    elif device == "cpu":
        reason = f"{where} on CPU over gloo (the test and smoke path)"
    else:
        reason = f"{where}, {STRATEGY_LABELS[strategy]} over NCCL"
    if serving:
        reason += f"; TRL's vLLM server generates on GPU {visible[0]}"
    elif train.distributed != "ddp" and processes == 1:
        reason += f"; distributed {train.distributed} ignored: one process"
    launcher: Literal["in-process", "accelerate"] = (
        "accelerate" if processes > 1 or serving else "in-process"
    )
    command = (
        launch_command(workspace, device=device, processes=processes)
        if launcher == "accelerate"
        else []
    )
    return Launch(
        launcher=launcher,
        device=device,
        processes=processes,
        processes_per_machine=per_machine,
        num_machines=train.num_machines,
        machine_rank=train.machine_rank,
        strategy=strategy,
        strategy_label=STRATEGY_LABELS[strategy],
        training_devices=training_devices,
        generation_device=visible[0] if serving else None,
        main_process_ip=train.main_process_ip,
        main_process_port=train.main_process_port,
        command=command,
        reason=reason,
    )


def fit_strategy(training: TrainConfig, launch: Launch, warnings: list[str]) -> TrainConfig:
    """The recipe as DeepSpeed can run it (unchanged for DDP and one process).

    ZeRO takes only optimisers it knows (torch's AdamW, not bitsandbytes' paged 8-bit one), so
    the recipe's paged_adamw_8bit becomes adamw_torch with a warning.  ZeRO-3 shards weights
    that 4-bit quantisation has already packed, which bitsandbytes' defaults do not allow: a
    ConfigError with the two ways out.
    """
    if launch.strategy not in ("zero2", "zero3"):
        return training
    if launch.strategy == "zero3" and training.load_in_4bit:
        raise ConfigError(
            "distributed zero3 cannot shard a 4-bit (bitsandbytes) model",
            hint="--set load_in_4bit=false (16-bit weights), or --distributed zero2 / ddp",
        )
    if "8bit" in training.optim:
        warnings.append(
            f"optim {training.optim} is not one DeepSpeed ZeRO accepts: adamw_torch is used"
        )
        training = training.model_copy(update={"optim": "adamw_torch"})
    return training
