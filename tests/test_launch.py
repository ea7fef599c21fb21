"""Several GPUs on paper: plan resolution and refusals, the accelerate config (read back by
accelerate itself), the launch command (parsed by accelerate's own parser), and the SkyPilot
task's flags (accepted by our CLI).  No process is launched here; tests/test_launch_run.py runs
real ranks, tests/test_vllm_server.py the generation server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from bootstrap.cli import main
from bootstrap.config import load_config
from bootstrap.detect import Detection, detect
from bootstrap.detect.gpu import GPU, GPUReport
from bootstrap.errors import ConfigError, EnvironmentUnfit
from bootstrap.launch.accelerate import accelerate_config, write_accelerate_config
from bootstrap.launch.environment import launch_environment
from bootstrap.planning.launch import Launch, resolve_launch
from bootstrap.planning.plan import Plan, build_plan
from tests.fakes.nvidia_smi import install_nvidia_smi
from tests.test_gpu import NVML_WORKS

REPO_ROOT = Path(__file__).resolve().parents[1]
H100 = ("NVIDIA H100 80GB HBM3", 81559, "9.0")


def gpus(count: int) -> GPUReport:
    name, memory, cc = H100
    cards = [
        GPU(index=i, name=name, memory_mib=memory, compute_capability=cc) for i in range(count)
    ]
    return GPUReport(gpus=cards, driver_version="580.65.06", cuda_version="13.0", source="nvml")


def machine(tmp_path: Path, count: int) -> Detection:
    """This machine's detection (offline, no probes), with `count` H100s in place of its GPUs."""
    config = load_config(environ={}, flags={"offline": True, "workspace": tmp_path}).config
    return detect(config).model_copy(update={"gpus": gpus(count)})


def plan_for(tmp_path: Path, count: int, **flags: Any) -> Plan:
    config = load_config(environ={}, flags={"offline": True, "workspace": tmp_path, **flags}).config
    return build_plan(config, machine(tmp_path, count))


@pytest.fixture
def fake_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Make `find_spec(name)` succeed: an empty package of that name on sys.path."""

    def install(name: str) -> None:
        root = tmp_path / "site"
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "__init__.py").write_text("")
        monkeypatch.syspath_prepend(str(root))

    return install


# --- plan resolution -----------------------------------------------------------------------


def test_one_gpu_trains_in_process_as_before(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, 1)
    assert plan.launch is not None
    assert (plan.launch.launcher, plan.launch.processes, plan.launch.strategy) == (
        "in-process",
        1,
        "single",
    )
    assert plan.launch.command == [] and plan.launch.training_devices == ["0"]


def test_gpus_auto_takes_every_visible_gpu_with_ddp_and_the_trl_backend(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, 4, gpus="auto")
    launch = plan.launch
    assert launch is not None and plan.training is not None
    assert (launch.launcher, launch.processes, launch.strategy_label) == ("accelerate", 4, "DDP")
    assert launch.training_devices == ["0", "1", "2", "3"] and launch.generation_device is None
    assert plan.backend.name == "trl" and "Unsloth trains on one GPU" in plan.backend.reason
    assert launch.command[1:4] == ["-m", "accelerate.commands.launch", "--config_file"]
    assert launch.command[-2:] == ["bootstrap.train.worker", str(tmp_path / "launch" / "job.json")]
    # the resolved plan survives the trip to the ranks (they validate it again)
    assert Plan.model_validate(json.loads(plan.model_dump_json())) == plan


def test_cuda_visible_devices_is_what_auto_counts(tmp_path: Path) -> None:
    launch = resolve_launch(
        load_config(environ={}, flags={"gpus": "auto"}).config.train,
        gpus(8),
        "gpu-80gb",
        tmp_path,
        environ={"CUDA_VISIBLE_DEVICES": "4,5"},
    )
    assert (launch.processes, launch.training_devices) == (2, ["4", "5"])


def test_more_gpus_than_visible_is_refused_with_the_count(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, 2, gpus=8)
    assert plan.training is None and plan.launch is None
    assert "gpus 8 asked for, but 2 GPU(s) are visible" in plan.refusal
    assert "--gpus 2 or --gpus auto" in plan.refusal
    with pytest.raises(EnvironmentUnfit) as caught:
        plan.require_training()
    assert caught.value.exit_code == 3


def test_unsloth_asked_for_with_several_gpus_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        plan_for(tmp_path, 2, gpus=2, backend="unsloth")
    assert "Unsloth's open-source build trains on one GPU" in str(caught.value)
    assert "--backend trl" in str(caught.value) and "--gpus 1" in str(caught.value)


def test_zero_without_deepspeed_is_refused_and_with_it_planned(tmp_path: Path, fake_module) -> None:
    plan = plan_for(tmp_path, 2, gpus=2, distributed="zero3")
    assert plan.training is None and "pip install deepspeed" in plan.refusal
    fake_module("deepspeed")
    plan = plan_for(tmp_path, 2, gpus=2, distributed="zero3")
    assert plan.launch is not None and plan.launch.strategy_label == "DeepSpeed ZeRO-3"


def test_vllm_server_takes_the_first_gpu_and_trains_on_the_others(
    tmp_path: Path, fake_module
) -> None:
    plan = plan_for(tmp_path, 3, gpus=3, vllm_server=True)
    assert plan.training is None and "vllm_server needs vllm" in plan.refusal
    fake_module("vllm")
    plan = plan_for(tmp_path, 3, gpus=3, vllm_server=True)
    launch = plan.launch
    assert launch is not None and plan.training is not None
    assert (launch.generation_device, launch.training_devices, launch.processes) == (
        "0",
        ["1", "2"],
        2,
    )
    assert (plan.backend.name, plan.backend.generation) == ("trl", "vllm")


def test_vllm_server_on_one_gpu_is_a_config_error(tmp_path: Path, fake_module) -> None:
    fake_module("vllm")
    with pytest.raises(ConfigError, match="vllm_server needs at least 2 GPUs"):
        plan_for(tmp_path, 4, gpus=1, vllm_server=True)


def test_the_generation_batch_must_hold_whole_groups_across_processes(tmp_path: Path) -> None:
    # 3 per device x 2 processes = 6 completions: not whole groups of 4
    with pytest.raises(ConfigError) as caught:
        plan_for(tmp_path, 2, gpus=2, num_generations=4, per_device_train_batch_size=3)
    message = str(caught.value)
    assert "3 x 2 process(es) x gradient_accumulation_steps 1 = 6" in message
    assert "multiple of num_generations 4" in message and "multiple of 2" in message
    # 2 per device x 2 processes = 4 is fine: the same global batch as 4 on one GPU
    plan = plan_for(tmp_path, 2, gpus=2, num_generations=4, per_device_train_batch_size=2)
    assert plan.training is not None and plan.training.per_device_train_batch_size == 2
    # left unset, the per-device batch is one group
    plan = plan_for(tmp_path, 2, gpus=2, num_generations=12)
    assert plan.training is not None and plan.training.per_device_train_batch_size == 12
    # a recipe's 16 per device is raised to the next that fits: 18 x 2 processes = 36 = 3
    # groups of 12 (one process would need 24)
    assert plan.profile is not None
    recipe = tmp_path / "batch16.yaml"
    recipe.write_text(
        f"about: batches of 16\nprofiles:\n  {plan.profile.profile.name}: {{per_device_train_batch_size: 16}}\n"
    )
    plan = plan_for(tmp_path, 2, gpus=2, num_generations=12, recipe=str(recipe))
    assert plan.training is not None and plan.training.per_device_train_batch_size == 18
    plan = plan_for(tmp_path, 2, gpus=1, num_generations=12, recipe=str(recipe))
    assert plan.training is not None and plan.training.per_device_train_batch_size == 24


def test_several_cpu_processes_are_only_the_cpu_smoke_path(tmp_path: Path) -> None:
    config = load_config(environ={}, flags={"gpus": 2}).config.train
    with pytest.raises(EnvironmentUnfit, match="no CUDA GPU"):
        resolve_launch(config, GPUReport(gpus=[], reason="none"), "gpu-24gb", tmp_path)
    launch = resolve_launch(config, GPUReport(gpus=[], reason="none"), "cpu-smoke", tmp_path)
    assert (launch.device, launch.processes, launch.launcher) == ("cpu", 2, "accelerate")
    assert "gloo" in launch.reason and "--multi_gpu" in launch.command
    zero = load_config(environ={}, flags={"gpus": 2, "distributed": "zero2"}).config.train
    with pytest.raises(ConfigError, match="needs CUDA GPUs"):
        resolve_launch(zero, GPUReport(gpus=[], reason="none"), "cpu-smoke", tmp_path)


def test_multi_machine_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs main_process_ip"):
        load_config(environ={}, flags={"num_machines": 2})
    with pytest.raises(ConfigError, match="must be below num_machines"):
        load_config(
            environ={}, flags={"num_machines": 2, "machine_rank": 2, "main_process_ip": "10.0.0.1"}
        )
    plan = plan_for(
        tmp_path, 8, gpus="auto", num_machines=2, machine_rank=1, main_process_ip="10.0.0.1"
    )
    assert plan.launch is not None
    assert (plan.launch.processes, plan.launch.processes_per_machine) == (16, 8)


# --- the CLI ------------------------------------------------------------------------------------


needs_stub_gpus = pytest.mark.skipif(NVML_WORKS, reason="NVML reports this machine's real GPUs")


@pytest.fixture
def two_h100s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_nvidia_smi(tmp_path / "bin", ["H100", "H100"])
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")


@needs_stub_gpus
def test_plan_json_shows_processes_strategy_and_the_launch_command(
    tmp_path: Path, two_h100s: None
) -> None:
    result = CliRunner().invoke(
        main, ["--json", "--workspace", str(tmp_path), "plan", "--offline", "--gpus", "auto"]
    )
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    launch = doc["launch"]
    assert (launch["processes"], launch["strategy_label"]) == (2, "DDP")
    assert doc["config"]["train"]["gpus"] == "auto" and doc["config_sources"]["gpus"] == "flag"
    assert "accelerate.commands.launch" in launch["command"]
    human = CliRunner().invoke(
        main, ["--workspace", str(tmp_path), "plan", "--offline", "--gpus", "2"]
    )
    assert human.exit_code == 0 and "processes" in human.stdout and "DDP" in human.stdout


@needs_stub_gpus
def test_train_with_more_gpus_than_visible_exits_3_before_touching_the_workspace(
    tmp_path: Path, two_h100s: None
) -> None:
    ws = tmp_path / "ws"
    result = CliRunner().invoke(main, ["--workspace", str(ws), "train", "--offline", "--gpus", "4"])
    assert result.exit_code == 3, result.output
    assert "2 GPU(s) are visible" in result.stderr and "--gpus auto" in result.stderr
    assert not ws.exists()


@needs_stub_gpus
def test_backend_unsloth_with_two_gpus_exits_2(tmp_path: Path, two_h100s: None) -> None:
    result = CliRunner().invoke(main, ["plan", "--offline", "--gpus", "2", "--backend", "unsloth"])
    assert result.exit_code == 2 and "--backend trl" in result.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--gpus", "0"], "expected a positive number of GPUs or auto"),
        (["--gpus", "many"], "expected a positive number of GPUs or auto"),
        (["--distributed", "zero1"], "Invalid value for '--distributed'"),
        (["--num-machines", "2"], "needs main_process_ip"),
    ],
)
def test_bad_launch_flags_exit_2(args: list[str], fragment: str) -> None:
    result = CliRunner().invoke(main, ["plan", "--offline", *args])
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr


def test_every_launch_field_is_also_an_environment_variable(tmp_path: Path) -> None:
    env = {
        "GRPO_BOOTSTRAP_GPUS": "2",
        "GRPO_BOOTSTRAP_DISTRIBUTED": "zero2",
        "GRPO_BOOTSTRAP_VLLM_SERVER": "false",
        "GRPO_BOOTSTRAP_NUM_MACHINES": "2",
        "GRPO_BOOTSTRAP_MACHINE_RANK": "1",
        "GRPO_BOOTSTRAP_MAIN_PROCESS_IP": "10.1.2.3",
        "GRPO_BOOTSTRAP_MAIN_PROCESS_PORT": "29600",
    }
    train = load_config(environ=env).config.train
    assert (train.gpus, train.distributed, train.vllm_server) == (2, "zero2", False)
    assert (
        train.num_machines,
        train.machine_rank,
        train.main_process_ip,
        train.main_process_port,
    ) == (
        2,
        1,
        "10.1.2.3",
        29600,
    )


# --- the accelerate config and the command ------------------------------------------------------


def _launch(
    tmp_path: Path,
    count: int,
    report: GPUReport | None = None,
    profile: str = "gpu-80gb",
    **flags: Any,
) -> tuple[Launch, Any]:
    config = load_config(environ={}, flags={"workspace": tmp_path, **flags}).config
    launch = resolve_launch(config.train, report or gpus(count), profile, tmp_path)
    settings = config.train.model_copy(update={"dtype": "bf16", "gradient_accumulation_steps": 2})
    return launch, settings


def _read_back(path: Path) -> Any:
    """The file as accelerate itself loads it (unknown keys or bad values raise there)."""
    from accelerate.commands.config.config_args import load_config_from_file

    return load_config_from_file(str(path))


def test_ddp_config_reads_back_in_accelerate(tmp_path: Path) -> None:
    launch, settings = _launch(tmp_path, 4, gpus=4)
    path = write_accelerate_config(launch, settings, tmp_path)
    assert path == tmp_path / "launch" / "accelerate.yaml"
    loaded = _read_back(path)
    assert str(loaded.distributed_type) == "DistributedType.MULTI_GPU"
    assert (loaded.num_processes, loaded.num_machines, loaded.machine_rank) == (4, 1, 0)
    assert (loaded.mixed_precision, loaded.gpu_ids, loaded.use_cpu) == ("bf16", "0,1,2,3", False)
    assert loaded.main_process_port == 29500
    assert not list((tmp_path / "launch").glob(".*"))  # written atomically: no temp left


@pytest.mark.parametrize(("strategy", "stage"), [("zero2", 2), ("zero3", 3)])
def test_deepspeed_configs_carry_the_zero_stage(
    tmp_path: Path, fake_module, strategy: str, stage: int
) -> None:
    fake_module("deepspeed")
    launch, settings = _launch(tmp_path, 2, gpus=2, distributed=strategy)
    loaded = _read_back(write_accelerate_config(launch, settings, tmp_path))
    assert str(loaded.distributed_type) == "DistributedType.DEEPSPEED"
    ds = loaded.deepspeed_config
    assert ds["zero_stage"] == stage and ds["zero3_init_flag"] is (stage == 3)
    # the Trainer's values, so DeepSpeed and the Trainer agree
    assert (
        ds["gradient_accumulation_steps"] == 2 and ds["gradient_clipping"] == settings.max_grad_norm
    )


def test_cpu_config_is_multi_cpu_with_use_cpu(tmp_path: Path) -> None:
    launch, settings = _launch(tmp_path, 0, GPUReport(gpus=[], reason="none"), "cpu-smoke", gpus=2)
    config = yaml.safe_load(
        write_accelerate_config(
            launch, settings.model_copy(update={"dtype": "fp32"}), tmp_path
        ).read_text()
    )
    assert (config["distributed_type"], config["use_cpu"], config["num_processes"]) == (
        "MULTI_CPU",
        True,
        2,
    )
    assert config["mixed_precision"] == "no" and config["gpu_ids"] == "all"


def test_multi_machine_config_names_machine_0(tmp_path: Path) -> None:
    launch, settings = _launch(
        tmp_path, 8, gpus="auto", num_machines=2, machine_rank=1,
        main_process_ip="10.0.0.7", main_process_port=29555,
    )  # fmt: skip
    loaded = _read_back(write_accelerate_config(launch, settings, tmp_path))
    assert (loaded.num_processes, loaded.num_machines, loaded.machine_rank) == (16, 2, 1)
    assert (loaded.main_process_ip, loaded.main_process_port) == ("10.0.0.7", 29555)
    assert loaded.rdzv_backend == "static" and loaded.same_network is True


def test_accelerate_parses_the_launch_command(tmp_path: Path) -> None:
    from accelerate.commands.launch import launch_command_parser

    launch, _ = _launch(tmp_path, 2, gpus=2)
    args = launch_command_parser().parse_args(launch.command[3:])
    assert args.config_file == str(tmp_path / "launch" / "accelerate.yaml")
    assert args.module and args.training_script == "bootstrap.train.worker"
    assert args.training_script_args == [str(tmp_path / "launch" / "job.json")]


def test_every_launch_turns_nvlink_multicast_off(tmp_path: Path) -> None:
    env = launch_environment({"PATH": "/usr/bin", "NCCL_NVLS_ENABLE": "1"})
    assert env["NCCL_NVLS_ENABLE"] == "0"  # forced, even over the user's value
    assert env["TORCH_SYMM_MEM_DISABLE_MULTICAST"] == "1" and env["NVSHMEM_DISABLE_NVLS"] == "1"
    assert int(env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]) >= 300  # room for the stop checkpoint
    assert env["PYTHONPATH"].split(":")[0] == str(REPO_ROOT)  # ranks import this bootstrap
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    for line in (
        "NCCL_NVLS_ENABLE=0",
        "TORCH_SYMM_MEM_DISABLE_MULTICAST=1",
        "NVSHMEM_DISABLE_NVLS=1",
    ):
        assert line in dockerfile


def test_accelerate_config_is_pure(tmp_path: Path) -> None:
    launch, settings = _launch(tmp_path, 2, gpus=2)
    assert accelerate_config(launch, settings) == accelerate_config(launch, settings)
    assert not (tmp_path / "launch").exists()


# --- the SkyPilot task ----------------------------------------------------------------------------


def _skypilot_docker_calls(
    tmp_path: Path, node_rank: int
) -> tuple[dict[str, Any], list[list[str]]]:
    """Run the task's `run` script as SkyPilot would on node `node_rank` of 2, with a stand-in
    `docker` that records its arguments; returns the task and each docker call's argv."""
    import subprocess

    task = yaml.safe_load((REPO_ROOT / "scripts" / "skypilot.yaml").read_text())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "docker.calls"
    docker = bin_dir / "docker"
    docker.write_text(f'#!/bin/sh\nprintf "%s\\0" "$@" >> {calls}\nprintf "\\n" >> {calls}\n')
    docker.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        **{k: str(v) for k, v in task["envs"].items()},
        "SKYPILOT_NODE_RANK": str(node_rank),
        "SKYPILOT_NODE_IPS": "10.0.0.7\n10.0.0.8",
        "SKYPILOT_NUM_NODES": "2",
        "SKYPILOT_NUM_GPUS_PER_NODE": "8",
    }
    done = subprocess.run(
        ["bash", "-c", task["run"]], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in calls.read_text().split("\n") if line]
    return task, [line.split("\0")[:-1] for line in lines]


def test_the_skypilot_task_matches_skypilots_schema_in_outline() -> None:
    task = yaml.safe_load((REPO_ROOT / "scripts" / "skypilot.yaml").read_text())
    assert set(task) <= {
        "name",
        "num_nodes",
        "resources",
        "envs",
        "secrets",
        "setup",
        "run",
        "file_mounts",
        "workdir",
    }
    assert task["num_nodes"] >= 2 and ":" in task["resources"]["accelerators"]
    for var in ("SKYPILOT_NODE_RANK", "SKYPILOT_NODE_IPS", "SKYPILOT_NUM_NODES"):
        assert var in task["run"]


@pytest.mark.parametrize("node_rank", [0, 1])
def test_the_skypilot_task_passes_flags_our_cli_accepts(tmp_path: Path, node_rank: int) -> None:
    task, calls = _skypilot_docker_calls(tmp_path, node_rank)
    image = task["envs"]["IMAGE"]
    commands = [call[call.index(image) + 1 :] for call in calls]
    assert [c[0] for c in commands] == (
        ["fetch", "train", "run"] if node_rank == 0 else ["fetch", "train"]
    )
    for call in calls:  # what the ranks on different nodes need to reach each other
        assert {"--network", "host", "--ipc", "--gpus", "all"} <= set(call)
    for command in commands[1:]:
        result = CliRunner().invoke(
            main, ["--json", "--workspace", str(tmp_path / "ws"), "plan", "--offline", *command[1:]]
        )
        assert result.exit_code == 0, result.output
        train = json.loads(result.stdout)["config"]["train"]
        assert (train["gpus"], train["num_machines"], train["machine_rank"]) == (
            "auto",
            2,
            node_rank,
        )
        assert (train["main_process_ip"], train["main_process_port"]) == ("10.0.0.7", 29500)


def test_the_documented_multi_machine_config_is_what_the_code_writes(tmp_path: Path) -> None:
    example = REPO_ROOT / "scripts" / "accelerate-multinode.example.yaml"
    launch, settings = _launch(
        tmp_path, 8, gpus="auto", num_machines=2, machine_rank=1, main_process_ip="10.0.0.7"
    )
    settings = settings.model_copy(update={"gradient_accumulation_steps": 1})
    assert yaml.safe_load(example.read_text()) == accelerate_config(launch, settings)
    _read_back(example)  # and accelerate reads it


def test_zero_gets_an_optimiser_deepspeed_accepts_and_zero3_refuses_4bit(
    tmp_path: Path, fake_module
) -> None:
    fake_module("deepspeed")
    plan = plan_for(tmp_path, 2, gpus=2, distributed="zero2", load_in_4bit=True)
    assert plan.training is not None and plan.training.optim == "adamw_torch"
    assert any("DeepSpeed ZeRO accepts" in w for w in plan.warnings)
    assert plan_for(tmp_path, 2, gpus=2).training.optim == "adamw_8bit"  # DDP keeps it
    with pytest.raises(ConfigError, match="cannot shard a 4-bit"):
        plan_for(tmp_path, 2, gpus=2, distributed="zero3", load_in_4bit=True)
    plan = plan_for(tmp_path, 2, gpus=2, distributed="zero3", load_in_4bit=False)
    assert plan.training is not None and plan.launch.strategy == "zero3"
