"""TRL's vLLM server mode: one GPU serves generation, the training ranks ask it over HTTP.

`trl vllm-serve` (TRL 1.14/1.15: `trl.scripts.vllm_serve`, which execs `vllm serve` with the
weight-transfer endpoints TRL's client needs) runs on the first GPU; the trainer, with
GRPOConfig(use_vllm=True, vllm_mode="server"), sends prompts to it and pushes the updated
weights into it after every step.  The server is started before the ranks, must answer vLLM's
/health route (the route TRL's own VLLMClient polls) within the start timeout, and is stopped
afterwards, also when training fails or is interrupted.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bootstrap.config import TrainConfig
from bootstrap.dtypes import vllm_dtype
from bootstrap.errors import Interrupted, TrainingFailed
from bootstrap.launch.environment import launch_environment
from bootstrap.launch.signals import terminated_with_parent
from bootstrap.lock import held_lock_fds

log = logging.getLogger(__name__)

HOST = "127.0.0.1"  # the ranks are on this machine (vllm_server is single-machine)
HEALTH_ROUTE = "/health"
START_TIMEOUT_S = 900.0  # model load + CUDA graph capture of a 3B model, with room to spare
STOP_GRACE_S = 30.0
# The server has its GPU to itself: most of it becomes KV cache, as `trl vllm-serve` suggests.
SERVER_GPU_MEMORY_UTILIZATION = 0.9


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def serve_command(model_dir: Path, settings: TrainConfig, port: int) -> list[str]:
    """`trl vllm-serve` for the base model, through this interpreter (PATH does not matter)."""
    return [
        sys.executable, "-m", "trl.scripts.vllm_serve",
        "--model", str(model_dir),
        "--host", HOST,
        "--port", str(port),
        "--gpu_memory_utilization", str(SERVER_GPU_MEMORY_UTILIZATION),
        "--dtype", vllm_dtype(settings.dtype or "bf16"),
        "--max_model_len", str(settings.max_seq_length),
    ]  # fmt: skip


def server_overrides(port: int) -> dict[str, Any]:
    """GRPOConfig fields that point the trainer at the server on `port`."""
    return {
        "use_vllm": True,
        "vllm_mode": "server",
        "vllm_server_base_url": f"http://{HOST}:{port}",
    }


def _tail(path: Path, lines: int = 20) -> str:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return "".join(collections.deque(handle, maxlen=lines)).strip() or "(no output)"
    except OSError:
        return "(no log)"


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (vLLM starts engine processes), then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def vllm_server(
    model_dir: Path,
    settings: TrainConfig,
    *,
    device: str,
    log_path: Path,
    stop: Any = None,
    timeout_s: float = START_TIMEOUT_S,
) -> Iterator[int]:
    """Run the server on GPU `device` (a CUDA_VISIBLE_DEVICES entry) while the block runs;
    yields its port once /health answers 200.  The server's output goes to `log_path`.

    `stop` is anything truthy once a signal asked us to stop (the waiting then ends).

    Raises:
        TrainingFailed: the server exited, or was not healthy within `timeout_s` (the message
            carries the end of its log).
        Interrupted: `stop` became true while waiting.
    """

    port = free_port()
    command = serve_command(model_dir, settings, port)
    env = {**launch_environment(), "CUDA_VISIBLE_DEVICES": device}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log.info("starting TRL's vLLM server on GPU %s, port %d (log: %s)", device, port, log_path)
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own group: stopped as a whole, not hit by Ctrl-C
            preexec_fn=terminated_with_parent(),  # noqa: PLW1509 - only a prctl, resolved before the fork
            pass_fds=held_lock_fds(),  # the workspace stays locked while it serves
        )  # fmt: skip
    try:
        _wait_healthy(proc, f"http://{HOST}:{port}{HEALTH_ROUTE}", log_path, stop, timeout_s)
        log.info("vLLM server ready on port %d", port)
        yield port
    finally:
        _stop(proc)
        log.info("vLLM server stopped")


def _wait_healthy(
    proc: subprocess.Popen[bytes], url: str, log_path: Path, stop: Any, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while not _healthy(url):
        if proc.poll() is not None:
            raise TrainingFailed(
                f"the vLLM server exited {proc.returncode} before it was ready. "
                f"Last lines of {log_path}:\n{_tail(log_path)}",
                hint="fix the cause shown (vllm install, GPU memory, model), or train without "
                "it: --no-vllm-server",
            )
        if stop:
            raise Interrupted(
                "interrupted while the vLLM server was starting; no training step ran",
                again="to start it",
            )
        if time.monotonic() > deadline:
            raise TrainingFailed(
                f"the vLLM server did not answer {url} within {timeout_s:g} s. "
                f"Last lines of {log_path}:\n{_tail(log_path)}",
                hint="see the log; a slow first start (downloads, compilation) may need more "
                "time, or train without it: --no-vllm-server",
            )
        time.sleep(0.5)
