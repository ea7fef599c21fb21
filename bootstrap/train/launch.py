"""Several GPUs (or machines): where the ranks run, the accelerate config, and the launch itself.

One GPU trains in this process.  With more, the trl backend runs under `accelerate launch`
(DDP, or DeepSpeed ZeRO-2/3), each rank re-entering our code through `bootstrap.train.worker`
with the plan this process resolved, so every rank trains the same recipe and writes to the same
workspace; only rank 0 writes metrics.jsonl, lora/ and samples.md.

- `resolve_launch` (plan time, no I/O, no torch): processes, strategy, devices, the command.
- `accelerate_config` / `write_accelerate_config`: the YAML `accelerate launch` reads.
- `run_distributed`: start TRL's vLLM server when asked (vllm_server.py), run the launch,
  forward SIGTERM/SIGINT to the ranks, and turn the ranks' outcome files back into our result
  or our errors (exit codes 2, 3, 5, 130 survive the trip through torch's launcher).

Signals: the launcher runs in its own session, so a terminal's Ctrl-C reaches only this process.
SIGTERM/SIGINT here write <workspace>/launch/stop, which every rank checks at each step end;
the ranks agree on the stop step (grpo.StopRequest.agreed), save one checkpoint together and
exit 130.  Signalling torch's elastic agent instead would start its kill timer (30 s before
torch 2.12) while the ranks still finish the step and save; it is only the fallback when the
ranks have not stopped RANK_SHUTDOWN_GRACE_S after the request (e.g. still waiting for the
other machines).  A second SIGINT kills the ranks at once.  If this process dies without a
word (kill -9, the OOM killer), Linux sends the launcher SIGTERM (PR_SET_PDEATHSIG), which the
agent passes on: the ranks save at the end of the step and stop instead of training on, unowned,
with the GPUs.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from bootstrap import constants as C
from bootstrap.config import TrainConfig
from bootstrap.detect.gpu import GPUReport
from bootstrap.errors import (
    BootstrapError,
    ConfigError,
    EnvironmentUnfit,
    Interrupted,
    MirrorsFailed,
    TrainingFailed,
)
from bootstrap.train.signals import stop_signals_to, terminated_with_parent
from bootstrap.workspace import Workspace, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

Strategy = Literal["single", "ddp", "zero2", "zero3"]
STRATEGY_LABELS: dict[str, str] = {
    "single": "one process",
    "ddp": "DDP",
    "zero2": "DeepSpeed ZeRO-2",
    "zero3": "DeepSpeed ZeRO-3",
}
LAUNCH_DIR = "launch"
ACCELERATE_CONFIG = "accelerate.yaml"
JOB_FILE = "job.json"
LOG_FILE = "launch.log"
STOP_FILE = "stop"
_LOG_TAIL_LINES = 30
_FOLLOW_INTERVAL_S = 0.2


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


def launch_dir(workspace: Path) -> Path:
    return Path(workspace) / LAUNCH_DIR


def stop_path(workspace: Path) -> Path:
    """The file whose presence asks every rank to checkpoint and stop (see the module doc)."""
    return launch_dir(workspace) / STOP_FILE


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


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
    if not _installed("vllm"):
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
    folder = launch_dir(workspace)
    command = [sys.executable, "-m", "accelerate.commands.launch",
               "--config_file", str(folder / ACCELERATE_CONFIG)]  # fmt: skip
    if device == "cpu" and processes > 1:
        command.append("--multi_gpu")
    return [*command, "-m", "bootstrap.train.worker", str(folder / JOB_FILE)]


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
        if not _installed("deepspeed"):
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


# --- the accelerate config ------------------------------------------------------------------

_MIXED_PRECISION = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}


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
        "mixed_precision": _MIXED_PRECISION[settings.dtype or "fp32"],
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
    path = launch_dir(workspace) / ACCELERATE_CONFIG
    text = yaml.safe_dump(accelerate_config(launch, settings), sort_keys=True)
    write_text_atomic(path, text)
    return path


# --- what a rank reports back -----------------------------------------------------------------


class RankOutcome(BaseModel):
    """Written by every rank to <workspace>/launch/outcome-<rank>.json when it ends."""

    rank: int
    exit_code: int  # 0 ok, else the BootstrapError's exit code
    step: int | None = None
    samples: Path | None = None
    backend_reason: str | None = None
    error: str | None = None  # the message, for exit_code != 0
    hint: str | None = None


_ERRORS: dict[int, type[BootstrapError]] = {
    cls.exit_code: cls
    for cls in (ConfigError, EnvironmentUnfit, MirrorsFailed, TrainingFailed, Interrupted)
}


def outcome_path(workspace: Path, rank: int) -> Path:
    return launch_dir(workspace) / f"outcome-{rank}.json"


def write_outcome(workspace: Path, outcome: RankOutcome) -> None:
    write_json_atomic(outcome_path(workspace, outcome.rank), outcome.model_dump(mode="json"))


def _read_outcomes(workspace: Path) -> list[RankOutcome]:
    found = sorted(launch_dir(workspace).glob("outcome-*.json"))
    return sorted(
        (RankOutcome.model_validate_json(p.read_text(encoding="utf-8")) for p in found),
        key=lambda o: o.rank,
    )


def error_from(outcome: RankOutcome) -> BootstrapError:
    """The BootstrapError a failed rank raised, rebuilt on this side (same exit code)."""
    cls = _ERRORS.get(outcome.exit_code, TrainingFailed)
    return cls(outcome.error or f"rank {outcome.rank} failed", hint=outcome.hint)


class Job(BaseModel):
    """What each rank reads from <workspace>/launch/job.json: the plan this process resolved."""

    plan: dict[str, Any]  # Plan.model_dump(mode="json"); typed as dict to avoid an import cycle
    resume: Path | None
    show_progress: bool
    overrides: dict[str, Any] = {}  # extra GRPOConfig fields (vLLM server mode)


# --- running it --------------------------------------------------------------------------------


def launch_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the launcher and every rank.

    NVLink multicast is forced off; torch's agent, if it ever has to pass a SIGTERM on (the
    fallback), waits RANK_SHUTDOWN_GRACE_S before killing (torch >= 2.12 reads the variable);
    and the ranks import the same `bootstrap` as this process (a source checkout run with
    `python -m` would otherwise lose to an installed copy).
    """
    env = dict(os.environ if environ is None else environ)
    env.update(C.NVLINK_MULTICAST_OFF)
    env.setdefault(C.TORCH_ELASTIC_SHUTDOWN_TIMEOUT, str(C.RANK_SHUTDOWN_GRACE_S))
    package_root = str(Path(__file__).resolve().parents[2])
    if package_root not in _site_dirs():  # an installed copy is found anyway; a checkout not
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _site_dirs() -> set[str]:
    import site

    return {str(Path(d).resolve()) for d in (*site.getsitepackages(), site.getusersitepackages())}


class _Forwarder:
    """SIGTERM/SIGINT to this process -> the stop file for the ranks; a second SIGINT kills
    the launcher's process group at once."""

    def __init__(self, stop_file: Path) -> None:
        self.signal_name: str | None = None
        self.stop_file = stop_file
        self.requested_at: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._escalated = False

    def __bool__(self) -> bool:
        return self.signal_name is not None

    def attach(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None:
            if signum == signal.SIGINT and self._proc is not None:
                log.warning("second SIGINT: killing the ranks without a checkpoint")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
            return
        self.signal_name = name
        self.requested_at = time.monotonic()
        write_text_atomic(self.stop_file, name)
        log.warning("%s received: every rank saves a checkpoint after this step, then stops", name)

    def escalate_if_overdue(self) -> None:
        """The ranks had RANK_SHUTDOWN_GRACE_S to stop: now SIGTERM torch's agent, which passes
        it on and kills what is left after its own timeout."""
        overdue = self.requested_at is not None and (
            time.monotonic() - self.requested_at > C.RANK_SHUTDOWN_GRACE_S
        )
        if overdue and not self._escalated and self._proc is not None:
            self._escalated = True
            log.warning("the ranks did not stop within %d s: signalling the launcher",
                        C.RANK_SHUTDOWN_GRACE_S)  # fmt: skip
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)

    def wait(self, proc: subprocess.Popen[bytes]) -> int:
        """Wait for the launcher, escalating a stop request the ranks did not honour."""
        while True:
            try:
                return proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                self.escalate_if_overdue()

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Forwarder]:
        with stop_signals_to(self._handle):
            yield self


def _follow(
    log_path: Path, start: int, proc: subprocess.Popen[bytes], tail: collections.deque[str]
) -> None:
    """Echo what the launch appends to launch.log (from byte `start`) on our stderr, keeping the
    last lines, until the launcher has exited and all it wrote has been read."""
    with log_path.open("r", encoding="utf-8", errors="replace") as log_file:
        log_file.seek(start)
        partial = ""
        while True:
            finished = proc.poll() is not None  # before reading: nothing is written after that
            chunk = log_file.read()
            *lines, partial = (partial + chunk).split("\n")
            if finished and partial:
                lines, partial = [*lines, partial], ""
            for line in lines:
                sys.stderr.write(line + "\n")
                tail.append(line + "\n")
            if finished:
                return
            if not chunk:
                time.sleep(_FOLLOW_INTERVAL_S)


def _start(command: list[str], env: dict[str, str], log_path: Path) -> tuple[
    subprocess.Popen[bytes], threading.Thread, collections.deque[str]
]:  # fmt: skip
    """Start the launcher writing into launch.log (appended), and a thread echoing it."""
    tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL_LINES)
    # The launch writes the file itself, not a pipe to us: if this process dies, the ranks' next
    # write does not fail with a broken pipe, and the file keeps their whole story.
    with log_path.open("ab") as log_file:
        start = log_file.tell()
        # Its own session: a terminal's Ctrl-C must not reach the ranks directly, only through
        # us (they would see it twice, once from the terminal and once from torch's agent).
        proc = subprocess.Popen(
            command,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=terminated_with_parent(),
        )
    follower = threading.Thread(target=_follow, args=(log_path, start, proc, tail), daemon=True)
    follower.start()
    return proc, follower, tail


def _conclude(
    workspace: Path, launch: Launch, returncode: int, stopped_by: str | None, tail: list[str]
) -> RankOutcome:
    outcomes = _read_outcomes(workspace)
    ok = [o for o in outcomes if o.exit_code == 0]
    failed = [o for o in outcomes if o.exit_code != 0]
    main = next((o for o in outcomes if o.rank == 0), None)
    if main is not None and main.exit_code == 0:
        if returncode != 0:
            log.warning("rank 0 finished but the launcher exited %d; see %s", returncode,
                        launch_dir(workspace) / LOG_FILE)  # fmt: skip
        return main
    if main is not None:
        raise error_from(main)
    if failed:  # rank 0 lives on another machine, or died without a word: the first failure
        raise error_from(failed[0])
    if launch.machine_rank > 0 and ok:
        return ok[0]
    log_path = launch_dir(workspace) / LOG_FILE
    last = "".join(tail).strip()[-2000:] or "(no output)"
    if stopped_by is not None:
        raise Interrupted(
            f"{stopped_by} received; the ranks stopped before reporting (launcher exit "
            f"{returncode}). Last output:\n{last}",
            hint="run `grpo-bootstrap train` again to resume from the last checkpoint",
        )
    raise TrainingFailed(
        f"the distributed launch exited {returncode} and no rank reported a result. "
        f"Last output:\n{last}",
        hint=f"the whole log is in {log_path}; fix the cause and run `grpo-bootstrap train` "
        "again: it resumes from the last checkpoint",
    )


def run_distributed(
    plan: Any, workspace: Workspace, *, resume: Path | None, show_progress: bool
) -> RankOutcome:
    """Train through `accelerate launch` as `plan.launch` says; rank 0's outcome on success.

    `plan` is the resolved Plan (typed loosely: plan.py imports this module).  Raises the error
    a rank raised (ConfigError, EnvironmentUnfit, TrainingFailed, Interrupted with the
    checkpoint's step), or TrainingFailed/Interrupted with the launcher's last output when no
    rank could say.
    """
    from bootstrap.train.vllm_server import server_overrides, vllm_server

    launch: Launch = plan.launch
    settings: TrainConfig = plan.require_training()
    folder = launch_dir(workspace.root)
    folder.mkdir(parents=True, exist_ok=True)
    for old in (*folder.glob("outcome-*.json"), stop_path(workspace.root)):
        old.unlink(missing_ok=True)
    write_accelerate_config(launch, settings, workspace.root)
    env = launch_environment()
    if launch.device == "cpu":
        # accelerate names each CPU rank's device "cpu:<rank>", which torch.load cannot map
        # storages to when the Trainer resumes the optimiser; plain "cpu" is the same device.
        env["ACCELERATE_TORCH_DEVICE"] = "cpu"
    forwarder = _Forwarder(stop_path(workspace.root))
    with forwarder.installed(), contextlib.ExitStack() as stack:
        overrides: dict[str, Any] = {}
        if launch.generation_device is not None:
            port = stack.enter_context(
                vllm_server(
                    workspace.model_dir(plan.config.model),
                    settings,
                    device=launch.generation_device,
                    log_path=folder / "vllm-server.log",
                    stop=forwarder,
                )
            )
            overrides = server_overrides(port)
        if launch.num_machines > 1:
            # Each machine keeps whole checkpoints in its own workspace (no shared filesystem
            # needed): every machine can then resume, and rank 0's machine writes lora/.
            overrides["save_on_each_node"] = True
        job = Job(
            plan=plan.model_dump(mode="json"),
            resume=resume,
            show_progress=show_progress,
            overrides=overrides,
        )
        write_json_atomic(folder / JOB_FILE, job.model_dump(mode="json"))
        log.info("launching %d rank(s) here (%s): %s", launch.processes_per_machine,
                 launch.strategy_label, " ".join(launch.command))  # fmt: skip
        proc, follower, tail = _start(launch.command, env, folder / LOG_FILE)
        forwarder.attach(proc)
        returncode = forwarder.wait(proc)
        follower.join(timeout=10)
    return _conclude(workspace.root, launch, returncode, forwarder.signal_name, list(tail))
