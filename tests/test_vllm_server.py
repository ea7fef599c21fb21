"""TRL's vLLM server mode, orchestrated for real against a stand-in server process.

The stand-in is a `trl.scripts.vllm_serve` module on PYTHONPATH (the module our command runs):
a real HTTP server on loopback that answers /health like vLLM, or crashes, or never becomes
ready.  It records its argv and environment, so the tests see the command and the GPU it got.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from bootstrap.config import load_config
from bootstrap.errors import Interrupted, TrainingFailed
from bootstrap.launch.vllm_server import server_overrides, vllm_server
from tests.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]

STUB = textwrap.dedent(
    """
    import argparse, json, os, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    args, _ = parser.parse_known_args()
    with open(os.environ["STUB_VLLM_RECORD"], "w") as handle:
        json.dump({"argv": sys.argv[1:], "pid": os.getpid(),
                   "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                   "nvls": os.environ.get("NCCL_NVLS_ENABLE")}, handle)
    mode = os.environ.get("STUB_VLLM_MODE", "ok")
    if mode == "crash":
        print("torch.OutOfMemoryError: CUDA out of memory (stub)", flush=True)
        sys.exit(3)
    if mode == "hang":
        time.sleep(3600)
    time.sleep(0.5)  # a server is never ready at once

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    ThreadingHTTPServer((args.host, args.port), Health).serve_forever()
    """
)


@pytest.fixture
def stub_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put the stand-in on PYTHONPATH; returns the file it records its start in."""
    package = tmp_path / "stub" / "trl" / "scripts"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "vllm_serve.py").write_text(STUB)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "stub"))
    record = tmp_path / "record.json"
    monkeypatch.setenv("STUB_VLLM_RECORD", str(record))
    return record


@pytest.fixture
def settings():
    return load_config(environ={}, flags={"dtype": "bf16", "max_seq_length": 1024}).config.train


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still has a pid; it no longer runs
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split()[2] != "Z"


def test_the_server_starts_on_its_gpu_answers_health_and_is_stopped_after(
    tmp_path: Path, stub_server: Path, settings
) -> None:
    model = tmp_path / "models" / "qwen"
    with vllm_server(model, settings, device="3", log_path=tmp_path / "vllm.log") as port:
        assert httpx.get(f"http://127.0.0.1:{port}/health", trust_env=False).status_code == 200
        record = json.loads(stub_server.read_text())
    argv = record["argv"]
    assert argv[argv.index("--model") + 1] == str(model)
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == str(port)
    assert argv[argv.index("--dtype") + 1] == "bfloat16"
    assert argv[argv.index("--max_model_len") + 1] == "1024"
    assert record["cuda"] == "3" and record["nvls"] == "0"
    assert not _alive(record["pid"])
    assert server_overrides(port) == {
        "use_vllm": True,
        "vllm_mode": "server",
        "vllm_server_base_url": f"http://127.0.0.1:{port}",
    }


def test_a_server_that_exits_is_training_failed_with_its_last_words(
    tmp_path: Path, stub_server: Path, settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STUB_VLLM_MODE", "crash")
    log_path = tmp_path / "vllm.log"
    with (
        pytest.raises(TrainingFailed) as caught,
        vllm_server(tmp_path, settings, device="0", log_path=log_path),
    ):
        pytest.fail("the block must not run")
    message = str(caught.value)
    assert "exited 3 before it was ready" in message and "CUDA out of memory (stub)" in message
    assert "--no-vllm-server" in message and caught.value.exit_code == 5


def test_a_server_that_never_answers_times_out_and_is_killed(
    tmp_path: Path, stub_server: Path, settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STUB_VLLM_MODE", "hang")
    started = time.monotonic()
    with (
        pytest.raises(TrainingFailed, match=r"did not answer .*/health within 2 s"),
        vllm_server(tmp_path, settings, device="0", log_path=tmp_path / "vllm.log", timeout_s=2),
    ):
        pytest.fail("the block must not run")
    assert time.monotonic() - started < 20
    assert not _alive(json.loads(stub_server.read_text())["pid"])


def test_the_server_is_stopped_when_training_fails(
    tmp_path: Path, stub_server: Path, settings
) -> None:
    with (
        pytest.raises(RuntimeError, match="rank died"),
        vllm_server(tmp_path, settings, device="0", log_path=tmp_path / "vllm.log"),
    ):
        raise RuntimeError("rank died")
    assert not _alive(json.loads(stub_server.read_text())["pid"])


def test_a_signal_while_the_server_starts_is_interrupted(
    tmp_path: Path, stub_server: Path, settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STUB_VLLM_MODE", "hang")

    class SignalOnceStarted:  # as the launcher's forwarder reads once SIGTERM has arrived
        def __bool__(self) -> bool:
            return stub_server.exists()

    with (
        pytest.raises(Interrupted, match="while the vLLM server was starting"),
        vllm_server(
            tmp_path, settings, device="0", log_path=tmp_path / "vllm.log", stop=SignalOnceStarted()
        ),
    ):
        pytest.fail("the block must not run")
    assert not _alive(json.loads(stub_server.read_text())["pid"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_server_does_not_outlive_a_killed_parent(tmp_path: Path, stub_server: Path) -> None:
    # The parent holds the server open and is then killed outright: no `finally` runs in it.
    script = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from bootstrap.config import load_config
        from bootstrap.launch.vllm_server import vllm_server

        settings = load_config(environ={}, flags={"max_seq_length": 1024}).config.train
        with vllm_server(Path(sys.argv[1]), settings, device="0", log_path=Path(sys.argv[2])):
            print("ready", flush=True)
            time.sleep(3600)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path), str(tmp_path / "vllm.log")],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "ready"
        server = json.loads(stub_server.read_text())["pid"]
        parent.kill()
        parent.wait()
        wait_until(lambda: not _alive(server), within_s=30, what="end of the orphaned server")
    finally:
        parent.kill()
        if stub_server.exists() and _alive(pid := json.loads(stub_server.read_text())["pid"]):
            os.kill(pid, signal.SIGKILL)
