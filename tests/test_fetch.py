"""fetch through the real huggingface_hub and modelscope clients against loopback hubs.

The hubs serve the real SmolLM2-135M-Instruct (as the job's model id) and a GSM8K-shaped
dataset; faults are injected on the wire.  Asserted: retried where it should be and not where
it should not, failed over when a mirror is dead, corrupt or partial files never reported done,
the final error naming every mirror.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from bootstrap.config import load_config
from bootstrap.detect import detect
from bootstrap.errors import EnvironmentUnfit, MirrorsFailed
from bootstrap.hub.fetch import fetch, read_manifest
from bootstrap.hub.retry import RetryPolicy
from bootstrap.hub.sources import CATALOG
from bootstrap.plan import build_plan
from bootstrap.workspace import Workspace, sha256_file
from tests.conftest import closed_loopback_url
from tests.fakes.fixtures import QWEN_ID
from tests.fakes.hf_hub import FakeHFHub
from tests.fakes.modelscope_hub import FakeModelScope
from tests.fakes.server import Fault

MINI = "tests/gsm8k-mini"  # not openai/gsm8k: the catalog knows GSM8K's real row counts
FAST = RetryPolicy(attempts=3, max_seconds=60, initial_wait_s=0.01, max_wait_s=2)
WEIGHTS = r"/resolve/[^/]+/model\.safetensors"
PINNED = CATALOG[("model", QWEN_ID)].hf_revision


@pytest.fixture
def hubs(tiny_qwen2_dir: Path, gsm8k_repo_dir: Path) -> Iterator[dict[str, Any]]:
    """Three live mirrors (Hugging Face, hf-mirror, ModelScope) serving the same repos; the
    model is a tiny Qwen2 (6 MB) so fault tests stay quick; one test serves the real SmolLM2."""
    with FakeHFHub() as hf, FakeHFHub() as mirror, FakeModelScope() as ms:
        for hub in (hf, mirror, ms):
            hub.add_repo(QWEN_ID, tiny_qwen2_dir, sha=PINNED)
            hub.add_repo(MINI, gsm8k_repo_dir, repo_type="dataset")
        yield {"huggingface": hf, "hf-mirror": mirror, "modelscope": ms}


def make_plan(tmp_path: Path, urls: dict[str, str], **flags: Any):
    endpoints = {
        "hf_endpoint": urls.get("huggingface", closed_loopback_url()),
        "hf_mirror_endpoint": urls.get("hf-mirror", closed_loopback_url()),
        "modelscope_endpoint": urls.get("modelscope", closed_loopback_url()),
    }
    flags = {"workspace": tmp_path / "ws", "dataset": MINI, "region": "global", "detect_timeout_s": 0.5, **endpoints, **flags}
    config = load_config(environ={}, flags=flags).config
    return build_plan(config, detect(config)), Workspace(config.workspace)


def urls_of(hubs: dict[str, Any], *names: str) -> dict[str, str]:
    return {name: hubs[name].url for name in names}


def downloads(hub: Any, pattern: str = WEIGHTS) -> list:
    return [r for r in hub.requests(pattern, method="GET")]


def hub_calls(hub: Any) -> list:
    """Requests to the hub's API and files, leaving out region detection's HEAD / probes."""
    return [r for r in hub.requests("") if r.path != "/"]


def test_fetch_from_hugging_face_verifies_and_records(tmp_path: Path, hubs: dict, smollm2_dir: Path) -> None:
    hubs["huggingface"].add_repo(QWEN_ID, smollm2_dir, sha=PINNED)
    plan, ws = make_plan(tmp_path, urls_of(hubs, "huggingface", "hf-mirror", "modelscope"))
    manifest = fetch(plan, ws, policy=FAST, progress=False)

    model = manifest.model
    assert model is not None and model.mirror == "huggingface"
    assert model.revision == PINNED  # the catalog's pinned commit was asked for and recorded
    weights = next(f for f in model.files if f.path == "model.safetensors")
    assert weights.sha256 == sha256_file(smollm2_dir / "model.safetensors")
    local = ws.model_dir(QWEN_ID)
    assert sorted(p.name for p in local.iterdir()) == sorted(f.path for f in model.files)
    assert not list(local.parent.glob(".*partial*"))  # staging was moved into place
    # the dataset in its one on-disk form
    for split, rows in (("train", 64), ("test", 16)):
        table = pq.read_table(ws.split_path(split))
        assert table.column_names == ["question", "answer"] and table.num_rows == rows
    assert json.loads(ws.manifest.read_text())["dataset"]["outputs"][0]["path"] == "data/gsm8k/train.parquet"
    assert not hub_calls(hubs["hf-mirror"]) and not hub_calls(hubs["modelscope"])

    # a second fetch finds everything current and sends nothing
    for hub in hubs.values():
        hub.clear_records()
    fetch(plan, ws, policy=FAST, progress=False)
    assert not any(hub_calls(hub) for hub in hubs.values())


def test_unreachable_mirror_goes_last_in_the_plan(tmp_path: Path, hubs: dict) -> None:
    plan, ws = make_plan(tmp_path, urls_of(hubs, "hf-mirror", "modelscope"))  # huggingface refuses
    assert [s.mirror for s in plan.model_sources] == ["hf-mirror", "modelscope", "huggingface"]
    assert "probe failed" in plan.model_sources[-1].reason
    manifest = fetch(plan, ws, policy=FAST, progress=False)
    assert manifest.model.mirror == "hf-mirror" and manifest.model.failed_mirrors == []


def test_failing_mirror_is_retried_then_left_for_the_next(tmp_path: Path, hubs: dict) -> None:
    hf = hubs["huggingface"]
    hf.faults.add(r"/api/models/", Fault.http(502), times=100)
    plan, ws = make_plan(tmp_path, urls_of(hubs, "huggingface", "hf-mirror"))
    manifest = fetch(plan, ws, policy=FAST, progress=False)
    assert manifest.model.mirror == "hf-mirror"
    (failed,) = manifest.model.failed_mirrors
    assert (failed.mirror, failed.attempts) == ("huggingface", FAST.attempts)
    assert "HTTP 502" in failed.error
    assert manifest.dataset.mirror == "huggingface"  # only the model's listing was failing


def test_china_order_uses_modelscope_client(tmp_path: Path, hubs: dict) -> None:
    plan, ws = make_plan(tmp_path, urls_of(hubs, "huggingface", "hf-mirror", "modelscope"), region="cn")
    manifest = fetch(plan, ws, policy=FAST, progress=False)
    assert (manifest.model.mirror, manifest.dataset.mirror) == ("modelscope", "modelscope")
    assert downloads(hubs["modelscope"], r"FilePath=model\.safetensors")
    assert not hub_calls(hubs["huggingface"])
    assert pq.read_table(ws.split_path("test")).num_rows == 16


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_retried_on_the_same_mirror(tmp_path: Path, hubs: dict, status: int) -> None:
    hf = hubs["huggingface"]
    hf.faults.add(r"/api/models/", Fault.http(status), times=2)
    plan, ws = make_plan(tmp_path, urls_of(hubs, "huggingface", "hf-mirror"))
    manifest = fetch(plan, ws, policy=FAST, progress=False)
    assert manifest.model.mirror == "huggingface"
    assert [r.status for r in hf.requests("/api/models/")][:3] == [status, status, 200]


def test_retry_after_is_honoured(tmp_path: Path, hubs: dict, caplog: pytest.LogCaptureFixture) -> None:
    hf = hubs["huggingface"]
    hf.faults.add(r"/api/models/", Fault.http(429, retry_after=1), times=1)
    plan, ws = make_plan(tmp_path, urls_of(hubs, "huggingface"))
    fetch(plan, ws, policy=FAST, progress=False)
    # the server's Retry-After, not the policy's 0.01 s backoff
    assert "HTTP 429" in caplog.text and "retrying in 1.0 s" in caplog.text
    assert [r.status for r in hf.requests("/api/models/")][:2] == [429, 200]


def test_missing_pinned_revision_is_not_retried(tmp_path: Path, hubs: dict, tiny_qwen2_dir: Path) -> None:
    hf = hubs["huggingface"]
    hf.add_repo(QWEN_ID, tiny_qwen2_dir, sha="0" * 40)  # the hub moved on; our pin is gone there
    plan, ws = make_plan(tmp_path, urls_of(hubs, "huggingface", "hf-mirror"))
    manifest = fetch(plan, ws, policy=FAST, progress=False)
    assert len(hf.requests("/api/models/")) == 1
    assert manifest.model.mirror == "hf-mirror" and manifest.model.revision == PINNED
    assert "HTTP 404" in manifest.model.failed_mirrors[0].error


def test_not_found_is_not_retried(tmp_path: Path, hubs: dict) -> None:
    hf = hubs["huggingface"]
    hf.repos.pop(("model", QWEN_ID))
    plan, ws = make_plan(tmp_path, urls_of(hubs, "huggingface", "hf-mirror"))
    manifest = fetch(plan, ws, policy=FAST, progress=False)
    assert len(hf.requests("/api/models/")) == 1  # asked once, then the next mirror
    assert manifest.model.mirror == "hf-mirror"
    assert manifest.model.failed_mirrors[0].attempts == 1


@pytest.mark.parametrize("fault", [Fault.corrupt(), Fault.truncate(0.5), Fault.drop(0.3)], ids=["corrupt", "truncated", "dropped"])
def test_bad_bodies_are_caught_and_fetched_again(tmp_path: Path, hubs: dict, tiny_qwen2_dir: Path, fault: Fault) -> None:
    hf = hubs["huggingface"]
    hf.faults.add(WEIGHTS, fault, times=1, methods=("GET",))
    plan, ws = make_plan(tmp_path, urls_of(hubs, "huggingface"))
    manifest = fetch(plan, ws, policy=FAST, progress=False)
    assert hf.faults.pending() == 0
    assert len(downloads(hf)) >= 2
    local = ws.model_dir(QWEN_ID) / "model.safetensors"
    assert sha256_file(local) == sha256_file(tiny_qwen2_dir / "model.safetensors")
    assert manifest.model.mirror == "huggingface"


def test_persistently_corrupt_mirror_is_never_reported_done(tmp_path: Path, hubs: dict) -> None:
    for name in ("huggingface", "hf-mirror"):
        hubs[name].faults.add(WEIGHTS, Fault.corrupt(), times=100, methods=("GET",))
    plan, ws = make_plan(tmp_path, urls_of(hubs, "huggingface", "hf-mirror"))
    with pytest.raises(MirrorsFailed) as info:
        fetch(plan, ws, policy=FAST, progress=False)
    assert info.value.exit_code == 4
    assert not ws.model_dir(QWEN_ID).exists()
    assert read_manifest(ws).model is None
    message = str(info.value)
    for name in ("huggingface", "hf-mirror", "modelscope"):
        assert f"{name} (" in message
    assert "sha256" in message and "after 3 attempt(s)" in message


def test_every_mirror_down_exits_4_naming_each(tmp_path: Path) -> None:
    plan, ws = make_plan(tmp_path, {})
    with pytest.raises(MirrorsFailed) as info:
        fetch(plan, ws, policy=FAST, progress=False)
    lines = str(info.value).splitlines()
    assert lines[0] == "every mirror failed for the model:"
    assert [line.split()[0] for line in lines[1:4]] == ["huggingface", "hf-mirror", "modelscope"]
    assert all("127.0.0.1" in line and "attempt(s)" in line for line in lines[1:4])


def test_wrong_dataset_fails_over(tmp_path: Path, hubs: dict, gsm8k_repo_dir: Path) -> None:
    # a mirror serving 64 rows as "openai/gsm8k" is serving something else: next mirror
    for hub in hubs.values():
        hub.add_repo("openai/gsm8k", gsm8k_repo_dir, repo_type="dataset")
    plan, ws = make_plan(tmp_path, urls_of(hubs, "huggingface"), dataset="openai/gsm8k", modelscope_dataset="openai/gsm8k")
    with pytest.raises(MirrorsFailed, match="expected \\{'train': 7473, 'test': 1319\\}"):
        fetch(plan, ws, policy=FAST, progress=False)
    assert not ws.split_path("train").exists()


def test_disk_is_checked_before_the_first_byte(tmp_path: Path, hubs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=10 * 2**20))
    plan, ws = make_plan(tmp_path, urls_of(hubs, "huggingface"))
    with pytest.raises(EnvironmentUnfit) as info:
        fetch(plan, ws, policy=FAST, progress=False)
    assert info.value.exit_code == 3
    assert "GiB free" in str(info.value) and "need" in str(info.value)
    assert not hubs["huggingface"].requests("/resolve/")


def test_token_goes_to_hugging_face_only_and_is_never_written(tmp_path: Path, hubs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "hf_testTOKENvalue0123456789"
    monkeypatch.setenv("HF_TOKEN", secret)
    hubs["huggingface"].faults.add(r"/api/models/", Fault.http(404), times=1)  # push the model to hf-mirror
    plan, ws = make_plan(tmp_path, urls_of(hubs, "huggingface", "hf-mirror"))
    fetch(plan, ws, policy=FAST, progress=False)
    assert hub_calls(hubs["huggingface"]) and hub_calls(hubs["hf-mirror"])
    assert all(r.auth == f"Bearer {secret}" for r in hub_calls(hubs["huggingface"]))
    assert all(r.auth is None for r in hub_calls(hubs["hf-mirror"]))
    for path in ws.root.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_offline_lists_what_is_missing_then_uses_the_workspace(tmp_path: Path, hubs: dict) -> None:
    plan, ws = make_plan(tmp_path, urls_of(hubs, "huggingface"))
    with pytest.raises(EnvironmentUnfit) as info:
        fetch(plan, ws, policy=FAST, progress=False, offline=True)
    assert f"model {QWEN_ID}" in str(info.value) and f"dataset {MINI}" in str(info.value)
    fetch(plan, ws, policy=FAST, progress=False)
    hubs["huggingface"].clear_records()
    manifest = fetch(plan, ws, policy=FAST, progress=False, offline=True)
    assert manifest.model is not None and not hub_calls(hubs["huggingface"])
    # a damaged file makes the artefact missing again
    (ws.model_dir(QWEN_ID) / "model.safetensors").write_bytes(b"x")
    with pytest.raises(EnvironmentUnfit, match="model"):
        fetch(plan, ws, policy=FAST, progress=False, offline=True)


def test_fetch_command_json_and_exit_codes(tmp_path: Path, hubs: dict) -> None:
    from click.testing import CliRunner

    from bootstrap.cli import main

    env = {
        "GRPO_BOOTSTRAP_HF_ENDPOINT": hubs["huggingface"].url,
        "GRPO_BOOTSTRAP_DATASET": MINI,
        "GRPO_BOOTSTRAP_FETCH_BACKOFF_S": "0.01",
        "GRPO_BOOTSTRAP_FETCH_ATTEMPTS": "2",
    }
    args = ["--json", "--workspace", str(tmp_path / "ws"), "fetch", "--region", "global", "--mirror", "huggingface"]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["model"]["mirror"] == "huggingface" and doc["dataset"]["outputs"]

    env["GRPO_BOOTSTRAP_HF_ENDPOINT"] = closed_loopback_url()
    args[2] = str(tmp_path / "other")
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 4
    assert json.loads(result.stdout)["exit_code"] == 4
    assert "huggingface (http://127.0.0.1:" in result.stderr and "after 2 attempt(s)" in result.stderr


def test_the_modelscope_clients_logs_go_through_our_handlers(
    tmp_path: Path, hubs: dict, caplog: pytest.LogCaptureFixture, root_records: list
) -> None:
    # modelscope_hub's logger brings its own stderr handler; during fetch its records must take
    # the root handlers instead, where the CLI's token filter and -q/-v levels sit.
    import logging

    caplog.set_level(logging.DEBUG)
    plan, ws = make_plan(tmp_path, urls_of(hubs, "modelscope"), region="cn")
    library = logging.getLogger("modelscope_hub")
    before = (library.handlers[:], library.propagate, library.level)
    fetch(plan, ws, policy=FAST, progress=False)
    assert any(r.name.startswith("modelscope_hub") for r in root_records)
    assert (library.handlers, library.propagate, library.level) == before  # its setup is back
