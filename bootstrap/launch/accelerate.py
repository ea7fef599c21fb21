"""The config `accelerate launch` reads: <workspace>/launch/accelerate.yaml, from the plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bootstrap.config import TrainConfig
from bootstrap.dtypes import accelerate_mixed_precision
from bootstrap.planning.launch import Launch
from bootstrap.workspace import Workspace, write_text_atomic


def accelerate_config(launch: Launch, settings: TrainConfig) -> dict[str, Any]:
    """The `accelerate launch --config_file` document for this launch (accelerate 1.x keys)."""
    if launch.device == "cpu":
        distributed_type = "MULTI_CPU" if launch.processes > 1 else "NO"
    elif launch.strategy in ("zero2", "zero3"):
        distributed_type = "DEEPSPEED"
    else:
        distributed_type = "MULTI_GPU" if launch.processes > 1 else "NO"
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": distributed_type,
        "num_processes": launch.processes,
        "num_machines": launch.num_machines,
        "machine_rank": launch.machine_rank,
        "main_process_port": launch.main_process_port,
        "mixed_precision": accelerate_mixed_precision(settings.dtype),
        "use_cpu": launch.device == "cpu",
        "gpu_ids": ",".join(launch.training_devices) or "all",
        "downcast_bf16": "no",
        "debug": False,
    }
    if launch.num_machines > 1:
        # A fixed rendezvous at machine 0 (torchrun's static backend), as accelerate's own
        # `accelerate config` writes it for machines on one network.
        config.update(
            main_process_ip=launch.main_process_ip, rdzv_backend="static", same_network=True
        )
    if distributed_type == "DEEPSPEED":
        stage = 3 if launch.strategy == "zero3" else 2
        config["deepspeed_config"] = {
            "zero_stage": stage,
            "offload_optimizer_device": "none",
            "offload_param_device": "none",
            "gradient_accumulation_steps": settings.gradient_accumulation_steps,
            "gradient_clipping": settings.max_grad_norm,
            "zero3_init_flag": stage == 3,
            "zero3_save_16bit_model": stage == 3,
        }
    return config


def write_accelerate_config(launch: Launch, settings: TrainConfig, workspace: Path) -> Path:
    """<workspace>/launch/accelerate.yaml, written atomically; returns its path."""
    path = Workspace(workspace).accelerate_config
    text = yaml.safe_dump(accelerate_config(launch, settings), sort_keys=True)
    write_text_atomic(path, text)
    return path
