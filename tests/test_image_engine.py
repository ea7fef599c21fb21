"""The image built by a real Docker engine and run: opt-in with --run-docker (about 15 minutes).

Base images cannot be pulled here, so the CUDA base is a stand-in made from Debian's packages
(scripts/standin-base.sh) and tagged as the one the Dockerfile's FROM names.  The build then runs
the repository's Dockerfile with only the changes that base forces, each applied to a copy and
checked to match exactly once (DIFFERENCES below), so a changed Dockerfile fails here instead of
being tested half-way:

- the `# syntax=` line goes: BuildKit would pull its Dockerfile frontend from Docker Hub;
- Python 3.11 (Debian 12's) instead of Ubuntu 24.04's 3.12, in the apt packages and the venv;
- images/cu130.lock in the build context is replaced by a hash-locked CPU set (torch 2.13.0+cpu
  and the library versions of images/ci-constraints.txt, locked by uv for Python 3.11), with the
  CPU torch wheel served on loopback through the Dockerfile's TORCH_INDEX_URL argument.  The
  CUDA wheels (torch's CUDA builds, vLLM, Unsloth, bitsandbytes) are therefore not in it.

Everything else is the real thing: the builder's hash-checked install, the llama.cpp build, the
project, `pip check`, the runtime stage's user, volume, environment and entrypoint.  The
containers run with --network none (the demo serves its hub on the container's loopback).

Needs root, `dockerd` (Debian's docker.io; started here with --bridge=none --iptables=false when
no engine answers, and stopped afterwards), debootstrap, uv (UV=path) and a CPU torch wheel for
Python 3.11 that pip can download (PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu).
EXTRA_CA names a CA the stand-in must trust (a TLS-intercepting proxy in front of PyPI).
DOCKER names a docker CLI that builds with BuildKit (20.10's own, or one with buildx).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "grpo-bootstrap:standin"
TORCH_CPU = "torch==2.13.0+cpu"
STANDIN_PYTHON = "3.11"
# (what the Dockerfile says, what the stand-in build says instead)
DIFFERENCES = (
    ("# syntax=docker/dockerfile:1\n", ""),
    ("python3.12 python3.12-venv ca-certificates", "python3.11 python3.11-venv ca-certificates"),
    ("python3.12 -m venv /opt/venv", "python3.11 -m venv /opt/venv"),
)
DEMO_STEPS = 120  # long enough on 2 CPU cores to stop it part-way


@dataclass
class Engine:
    docker: str
    env: dict[str, str]

    def __call__(
        self, *args: str, timeout: float = 900, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.docker, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"docker {' '.join(args[:3])} exited {result.returncode}:\n{result.stderr[-3000:]}"
            )
        return result


def _answers(docker: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [docker, "info", "--format", "{{.ServerVersion}}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    docker = shutil.which(os.environ.get("DOCKER", "docker"))
    if docker is None:
        pytest.skip("no docker CLI on PATH (apt-get install docker.io)")
    probe = _answers(docker, dict(os.environ))
    if probe.returncode == 0:
        yield Engine(docker, dict(os.environ))
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        pytest.skip(
            f"no Docker engine answers ({probe.stderr.strip()[:200]}) and none can be started "
            "here: starting dockerd needs root and docker.io"
        )
    # A short path: a unix socket's path is limited to 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="grpo-dockerd-", dir="/tmp"))
    env = {**os.environ, "DOCKER_HOST": f"unix://{root}/docker.sock"}
    with (root / "dockerd.log").open("w") as log:
        daemon = subprocess.Popen(
            [dockerd, "--bridge=none", "--iptables=false", "--ip6tables=false",
             "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
             "--pidfile", str(root / "dockerd.pid"), "-H", env["DOCKER_HOST"]],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while _answers(docker, env).returncode != 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                tail = (root / "dockerd.log").read_text()[-1500:]
                pytest.skip(f"dockerd did not start (exit {daemon.poll()}):\n{tail}")
            time.sleep(1)
        yield Engine(docker, env)
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        shutil.rmtree(root, ignore_errors=True)


def standin_dockerfile(text: str) -> str:
    for real, standin in DIFFERENCES:
        assert text.count(real) == 1, (
            f"the Dockerfile no longer says {real!r} once: update DIFFERENCES"
        )
        text = text.replace(real, standin)
    return text


def base_tag(dockerfile: str) -> str:
    """The FROM of the base stage with the Dockerfile's default build arguments."""
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile, re.MULTILINE))
    source = re.search(r"^FROM (\S+) AS base$", dockerfile, re.MULTILINE).group(1)
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], source)


def _cpu_torch_wheel(into: Path) -> Path:
    """A CPU torch wheel for the stand-in's Python, through pip's own configuration."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
         "--python-version", STANDIN_PYTHON, "--platform", "manylinux_2_28_x86_64", "-d", str(into), TORCH_CPU],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    wheels = sorted(into.glob("torch-*+cpu-*.whl"))
    if result.returncode != 0 or not wheels:
        pytest.skip(
            f"no {TORCH_CPU} wheel for Python {STANDIN_PYTHON} to download "
            f"(PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu): {result.stderr[-300:]}"
        )
    return wheels[0]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # pip asks this index for every package; the 404s are expected


def _serve(directory: Path) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _standin_lock(wheels: Path, out: Path) -> None:
    uv = shutil.which(os.environ.get("UV", "uv"))
    if uv is None:
        pytest.skip("uv locks the stand-in CPU set: pip install uv (or UV=/path/to/uv)")
    (wheels.parent / "torch.in").write_text(TORCH_CPU + "\n")
    subprocess.run(
        [uv, "pip", "compile", "pyproject.toml", str(wheels.parent / "torch.in"),
         "--extra", "train", "--extra", "export", "-c", "images/ci-constraints.txt",
         "--generate-hashes", "--python-platform", "x86_64-manylinux_2_28", "--python-version", STANDIN_PYTHON,
         "--find-links", str(wheels), "--index-url", "https://pypi.org/simple", "--quiet", "-o", str(out)],
        cwd=ROOT, check=True, timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def image(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("image")
    dockerfile = (ROOT / "Dockerfile").read_text()
    subprocess.run(
        ["bash", str(ROOT / "scripts/standin-base.sh"), base_tag(dockerfile)],
        env={**engine.env, "DOCKER": engine.docker},
        check=True,
        timeout=1200,
    )
    index = work / "index" / "simple" / "torch"
    index.mkdir(parents=True)
    wheel = _cpu_torch_wheel(index)
    context = work / "context"
    context.mkdir()
    for name in (".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, context / name)
    for name in ("bootstrap", "images", "scripts"):
        shutil.copytree(ROOT / name, context / name, ignore=shutil.ignore_patterns("__pycache__"))
    (context / "Dockerfile").write_text(standin_dockerfile(dockerfile))
    _standin_lock(index, context / "images" / "cu130.lock")
    server = _serve(work / "index")
    started = time.monotonic()
    try:
        build = subprocess.run(
            [engine.docker, "build", "--network", "host", "-t", IMAGE,
             "--build-arg", f"TORCH_INDEX_URL=http://127.0.0.1:{server.server_port}/simple", str(context)],
            env={**engine.env, "DOCKER_BUILDKIT": "1"}, capture_output=True, text=True, timeout=3600,
            check=False,
        )  # fmt: skip
    finally:
        server.shutdown()
    (work / "build.log").write_text(build.stdout + build.stderr)
    assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]
    size = int(engine("image", "inspect", "-f", "{{.Size}}", IMAGE).stdout)
    print(
        f"\nimage {IMAGE}: built in {time.monotonic() - started:.0f} s, {size / 2**30:.2f} GiB, "
        f"torch wheel {wheel.name}, log {work / 'build.log'}"
    )
    yield IMAGE
    engine("image", "rm", "-f", IMAGE, check=False)


@pytest.fixture
def volume(engine: Engine) -> Iterator[str]:
    name = f"grpo-test-{os.getpid()}-{time.monotonic_ns()}"
    engine("volume", "create", name)
    yield name
    engine("volume", "rm", "-f", name, check=False)


def test_the_runtime_stage_is_non_root_with_tini_and_a_workspace_volume(
    engine: Engine, image: str
) -> None:
    config = json.loads(engine("image", "inspect", "-f", "{{json .Config}}", image).stdout)
    assert config["User"] == "1001"
    assert config["Volumes"] == {"/workspace": {}}
    assert config["WorkingDir"] == "/workspace"
    assert config["Entrypoint"] == ["/usr/bin/tini", "--", "/usr/local/bin/grpo-entrypoint"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["GRPO_BOOTSTRAP_IMAGE_VARIANT"] == "cu130"
    assert env["HF_HOME"] == "/workspace/cache/huggingface"
    who = engine("run", "--rm", "--network", "none", "--entrypoint", "id", image).stdout
    assert who.startswith("uid=1001(grpo) gid=1001(grpo)")
    version = engine("run", "--rm", "--network", "none", image, "--version").stdout
    assert "grpo-bootstrap" in version


def test_run_demo_exits_0_and_a_second_run_skips_every_stage(
    engine: Engine, image: str, volume: str
) -> None:
    started = time.monotonic()
    first = engine(
        "run", "--rm", "--network", "none", "-v", f"{volume}:/workspace", image, "--demo"
    )
    took = time.monotonic() - started
    assert "GSM8K accuracy" in first.stdout
    stages = re.findall(r"^(\w[\w ()-]*?): ran", first.stderr, re.MULTILINE)
    assert {"fetch", "train", "export"} <= set(stages), first.stderr[-2000:]
    second = engine(
        "run", "--rm", "--network", "none", "-v", f"{volume}:/workspace", image, "--demo"
    )
    assert ": ran" not in second.stderr and second.stderr.count("skipped (done)") >= 5
    print(f"\nrun --demo in the container: exit 0 in {took:.0f} s; again: every stage skipped")


def _in_volume(engine: Engine, image: str, volume: str, program: str, *args: str) -> str:
    """stdout of `program args` run in a throwaway container of the image over the volume."""
    mount = f"{volume}:/workspace"
    run = ["run", "--rm", "--network", "none", "-v", mount, "--entrypoint", program, image]
    return engine(*run, *args).stdout


def _metric_steps(engine: Engine, image: str, volume: str) -> list[int]:
    text = _in_volume(engine, image, volume, "cat", "/workspace/job/metrics.jsonl")
    return [json.loads(line)["step"] for line in text.splitlines() if line.strip()]


def test_docker_stop_in_training_exits_130_with_a_checkpoint_and_the_next_run_resumes(
    engine: Engine, image: str, volume: str
) -> None:
    name = f"grpo-stop-{os.getpid()}"
    job = ["--set", f"max_steps={DEMO_STEPS}", "--set", "save_steps=1000", "--demo"]
    # rich wraps log lines at 80 columns without a terminal, COLUMNS widens them
    run = ["run", "--network", "none", "-e", "COLUMNS=250", "-v", f"{volume}:/workspace"]
    engine(*run, "-d", "--name", name, image, *job)
    try:
        deadline = time.monotonic() + 900
        lines = 0
        while lines < 3:  # training is under way: three steps logged
            assert time.monotonic() < deadline, engine("logs", name, check=False).stderr[-2000:]
            state = engine("inspect", "-f", "{{.State.Running}}", name).stdout.strip()
            assert state == "true", engine("logs", name, check=False).stderr[-3000:]
            count = engine(
                "exec", name, "sh", "-c", "wc -l < /workspace/job/metrics.jsonl", check=False
            )
            lines = int(count.stdout.strip() or 0) if count.returncode == 0 else 0
            time.sleep(2)
        pid1 = engine("exec", name, "cat", "/proc/1/cmdline").stdout.split("\0")
        assert pid1[:3] == ["/usr/bin/tini", "--", "/usr/local/bin/grpo-entrypoint"]
        stopped = time.monotonic()
        engine("stop", "-t", "300", name, timeout=400)
        took = time.monotonic() - stopped
        exit_code = int(engine("inspect", "-f", "{{.State.ExitCode}}", name).stdout)
        logs = engine("logs", name).stderr
    finally:
        engine("rm", "-f", name, check=False)
    assert exit_code == 130, logs[-3000:]
    listing = _in_volume(engine, image, volume, "ls", "/workspace/job/checkpoints").split()
    [checkpoint] = [c for c in listing if c.startswith("checkpoint-")]
    step = int(checkpoint.split("-")[1])
    assert 3 <= step < DEMO_STEPS
    resumed = " ".join(engine(*run, "--rm", image, *job).stderr.split())
    assert (
        f"resuming from /workspace/job/checkpoints/{checkpoint} (step {step} of {DEMO_STEPS})"
        in resumed
    )
    assert _metric_steps(engine, image, volume) == list(range(1, DEMO_STEPS + 1))  # each step once
    print(
        f"\ndocker stop at step {step}: exit 130 after {took:.0f} s, {checkpoint} on the volume; "
        f"the next docker run resumed from it and finished step {DEMO_STEPS}"
    )
