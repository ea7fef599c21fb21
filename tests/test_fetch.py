"""fetch through the real huggingface_hub and modelscope clients against loopback hubs.

The hubs serve the real SmolLM2-135M-Instruct (as the job's model id) and a GSM8K-shaped
dataset; faults are injected on the wire.  Asserted: retried where it should be and not where
it should not, failed over when a mirror is dead, corrupt or partial files never reported done,
the final error naming every mirror.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from bootstrap.config import load_config
from bootstrap.detect import detect
from bootstrap.errors import ConfigError, EnvironmentUnfit, MirrorsFailed
from bootstrap.hub import aria2
from bootstrap.hub.fetch import fetch, read_manifest
from bootstrap.hub.retry import RetryPolicy
from bootstrap.planning.plan import build_plan
from bootstrap.planning.sources import CATALOG
from bootstrap.workspace import Workspace, sha256_file
from tests.conftest import closed_loopback_url
from tests.fakes.fixtures import QWEN_ID
from tests.fakes.hf_hub import FakeHFHub
from tests.fakes.metadata import FakeServer, Reply
from tests.fakes.modelscope_hub import FakeModelScope
from tests.fakes.server import Fault

MINI = "tests/gsm8k-mini"  # not openai/gsm8k: the catalog knows GSM8K's real row counts
FAST = RetryPolicy(attempts=3, max_seconds=60, initial_wait_s=0.01, max_wait_s=2)
WEIGHTS = r"/resolve/[^/]+/model\.safetensors"
PINNED = CATALOG[("model", QWEN_ID)].hf_revision


@pytest.fixture(autouse=True)
def _one_listing_try_inside_modelscope(monkeypatch: pytest.MonkeyPatch) -> None:
    """modelscope_hub retries a listing page itself (4 tries, 1 + 2 + 4 s apart) inside each of
    FAST's attempts: 21 s for every test with ModelScope down.  One try each here, as FAST
    shortens our own retries; its constant was read when the client was imported."""
    import modelscope_hub._legacy_api

    monkeypatch.setattr(modelscope_hub._legacy_api, "REPO_TREE_PAGE_MAX_ATTEMPTS", 1)


@pytest.fixture
def hubs(tiny_qwen2_dir: Path, gsm8k_repo_dir: Path) -> Iterator[dict[str, Any]]:
    """Three live mirrors (Hugging Face, hf-mirror, ModelScope) serving the same repos; the
    model is a tiny Qwen2 (6 MB) so fault tests stay quick; one test serves the real SmolLM2."""
    with FakeHFHub() as hf, FakeHFHub() as mirror, FakeModelScope() as ms:
        for hub in (hf, mirror, ms):
            hub.add_repo(QWEN_ID, tiny_qwen2_dir, sha=PINNED)
            hub.add_repo(MINI, gsm8k_repo_dir, repo_type="dataset")
        yield {"huggingface": hf, "hf-mirror": mirror, "modelscope": ms}


# The two ways fetch moves bytes on an HF-API mirror: aria2c (where installed), and
# huggingface_hub in a worker process (where not).  Tests that download run through both.
NO_ARIA2C = shutil.which("aria2c") is None and not os.environ.get("CI")  # CI installs it
DOWNLOADERS = pytest.mark.parametrize(
    "downloader",
    [
        pytest.param("aria2c", marks=pytest.mark.skipif(NO_ARIA2C, reason="apt-get install aria2")),
        "hub",
    ],
)


def make_plan(tmp_path: Path, urls: dict[str, str], **flags: Any):
    endpoints = {
        "hf_endpoint": urls.get("huggingface", closed_loopback_url()),
        "hf_mirror_endpoint": urls.get("hf-mirror", closed_loopback_url()),
        "modelscope_endpoint": urls.get("modelscope", closed_loopback_url()),
    }
    flags = {
        "workspace": tmp_path / "ws",
        "dataset": MINI,
        "region": "global",
        "detect_timeout_s": 0.5,
        **endpoints,
        **flags,
    }
    config = load_config(environ={}, flags=flags).config
    return build_plan(config, detect(config)), Workspace(config.workspace)


def urls_of(hubs: dict[str, Any], *names: str) -> dict[str, str]:
    return {name: hubs[name].url for name in names}


def downloads(hub: Any, pattern: str = WEIGHTS) -> list:
    return [r for r in hub.requests(pattern, method="GET")]


def hub_calls(hub: Any) -> list:
    """Requests to the hub's API and files, leaving out region detection's HEAD / probes."""
    return [r for r in hub.requests("") if r.path != "/"]


@DOWNLOADERS
def test_fetch_from_hugging_face_verifies_and_records(
    tmp_path: Path, hubs: dict, downloader: str, smollm2_dir: Path
) -> None:
    hubs["huggingface"].add_repo(QWEN_ID, smollm2_dir, sha=PINNED)
    plan, ws = make_plan(
        tmp_path,
        urls_of(hubs, "huggingface", "hf-mirror", "modelscope"),
        fetch_downloader=downloader,
    )
    manifest = fetch(plan, ws, policy=FAST, progress=False)

    model = manifest.model
    assert model is not None and model.mirror == "huggingface"
    assert model.revision == PINNED  # the catalog's pinned commit was asked for and recorded
    assert model.downloader == {"aria2c": "aria2c", "hub": "huggingface_hub"}[downloader]
    weights = next(f for f in model.files if f.path == "model.safetensors")
    assert weights.sha256 == sha256_file(smollm2_dir / "model.safetensors")
    local = ws.model_dir(QWEN_ID)
    assert sorted(p.name for p in local.iterdir()) == sorted(f.path for f in model.files)
    assert not list(local.parent.glob(".*partial*"))  # staging was moved into place
    # the dataset in its one on-disk form
    for split, rows in (("train", 64), ("test", 16)):
        table = pq.read_table(ws.split_path(split))
        assert table.column_names == ["question", "answer"] and table.num_rows == rows
    assert (
        json.loads(ws.manifest.read_text())["dataset"]["outputs"][0]["path"]
        == "data/task/train.parquet"
    )
    assert not hub_calls(hubs["hf-mirror"]) and not hub_calls(hubs["modelscope"])

    # a second fetch finds everything current and sends nothing
    for hub in hubs.values():
        hub.clear_records()
    fetch(plan, ws, policy=FAST, progress=False)
    assert not any(hub_calls(hub) for hub in hubs.values())


def test_model_and_dataset_download_at_the_same_time(tmp_path: Path, hubs: dict) -> None:
    hf = hubs["huggingface"]
    # The model's listing is answered only once the dataset's has been asked for: one after
    # the other, the model waits 20 s in vain and is refused.
    hf.hold(r"/api/models/", until=r"/api/datasets/", timeout_s=20)
    plan, ws = make_plan(tmp_path, urls_of(hubs, "huggingface"))
    manifest = fetch(plan, ws, policy=FAST, progress=False)
    assert hf.holds_expired == 0
    assert (manifest.model.mirror, manifest.dataset.mirror) == ("huggingface", "huggingface")


def test_without_aria2c_auto_falls_back_to_the_hub_client_and_aria2c_insisted_on_exits_3(
    tmp_path: Path, hubs: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))  # no aria2c to be found
    plan, ws = make_plan(tmp_path, urls_of(hubs, "huggingface"), fetch_downloader="aria2c")
    with pytest.raises(EnvironmentUnfit, match="no aria2c") as info:
        fetch(plan, ws, policy=FAST, progress=False)
    assert info.value.exit_code == 3 and not hubs["huggingface"].requests("/resolve/")
    plan, ws = make_plan(tmp_path, urls_of(hubs, "huggingface"))
    manifest = fetch(plan, ws, policy=FAST, progress=False)
    assert manifest.model.downloader == manifest.dataset.downloader == "huggingface_hub"


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
    plan, ws = make_plan(
        tmp_path, urls_of(hubs, "huggingface", "hf-mirror", "modelscope"), region="cn"
    )
    manifest = fetch(plan, ws, policy=FAST, progress=False)
    assert (manifest.model.mirror, manifest.dataset.mirror) == ("modelscope", "modelscope")
    # the commit fetched, not the branch: the listing's newest Revision
    ms = hubs["modelscope"]
    assert manifest.model.revision == PINNED
    assert manifest.dataset.revision == ms.repos[("dataset", MINI)].sha
    (weights,) = downloads(ms, r"FilePath=model\.safetensors")
    assert weights.status == 302  # LFS files come from the CDN host
    assert [r.status for r in ms.oss.requests(r"/modelscope-lfs/", "GET")][:1] == [200]
    assert not hub_calls(hubs["huggingface"])
    assert pq.read_table(ws.split_path("test")).num_rows == 16


def test_modelscope_listing_failed_with_http_200_is_retried(tmp_path: Path, hubs: dict) -> None:
    hubs["modelscope"].fail_listing(times=1)  # HTTP 200, Success: false
    plan, ws = make_plan(tmp_path, urls_of(hubs, "modelscope"), region="cn")
    manifest = fetch(plan, ws, policy=FAST, progress=False)
    assert manifest.dataset.mirror == "modelscope" and manifest.dataset.failed_mirrors == []
    tree = hubs["modelscope"].requests(r"/api/v1/datasets/.*/repo/tree")
    assert len({r.query for r in tree}) < len(tree)  # the failed page was asked again


def test_modelscope_files_without_sha256_in_the_listing_are_still_recorded(
    tmp_path: Path, hubs: dict, tiny_qwen2_dir: Path
) -> None:
    assert "generation_config.json" in hubs["modelscope"].no_sha256
    plan, ws = make_plan(tmp_path, urls_of(hubs, "modelscope"), region="cn")
    manifest = fetch(plan, ws, policy=FAST, progress=False)
    record = next(f for f in manifest.model.files if f.path == "generation_config.json")
    assert record.sha256 == sha256_file(tiny_qwen2_dir / "generation_config.json")


def test_modelscope_model_listing_past_the_services_3000_entries_is_whole(tmp_path: Path) -> None:
    from bootstrap.hub.clients import ModelScopeClient
    from bootstrap.planning.sources import Source

    for i in range(3010):
        (tmp_path / f"part{i % 4}").mkdir(exist_ok=True)
        (tmp_path / f"part{i % 4}" / f"{i}.json").write_text("{}")
    with FakeModelScope() as ms:
        ms.add_repo("acme/many", tmp_path)
        source = Source(mirror="modelscope", kind="modelscope", endpoint=ms.url,
                        repo_id="acme/many", repo_type="model", revision=None, reason="test")  # fmt: skip
        snapshot = ModelScopeClient().describe(source, ["*"], ())
    assert len(snapshot.files) == 3010


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_retried_on_the_same_mirror(
    tmp_path: Path, hubs: dict, status: int
) -> None:
    hf = hubs["huggingface"]
    hf.faults.add(r"/api/models/", Fault.http(status), times=2)
    plan, ws = make_plan(tmp_path, urls_of(hubs, "huggingface", "hf-mirror"))
    manifest = fetch(plan, ws, policy=FAST, progress=False)
    assert manifest.model.mirror == "huggingface"
    assert [r.status for r in hf.requests("/api/models/")][:3] == [status, status, 200]


@DOWNLOADERS
def test_retry_after_is_honoured(
    tmp_path: Path, hubs: dict, downloader: str, caplog: pytest.LogCaptureFixture
) -> None:
    hf = hubs["huggingface"]
    hf.faults.add(r"/api/models/", Fault.http(429, retry_after=1), times=1)
    plan, ws = make_plan(tmp_path, urls_of(hubs, "huggingface"), fetch_downloader=downloader)
    fetch(plan, ws, policy=FAST, progress=False)
    # the server's Retry-After, not the policy's 0.01 s backoff
    assert "HTTP 429" in caplog.text and "retrying in 1.0 s" in caplog.text
    assert [r.status for r in hf.requests("/api/models/")][:2] == [429, 200]


def test_missing_pinned_revision_is_not_retried(
    tmp_path: Path, hubs: dict, tiny_qwen2_dir: Path
) -> None:
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


@pytest.mark.parametrize(
    "fault",
    [Fault.corrupt(), Fault.truncate(0.5), Fault.drop(0.3)],
    ids=["corrupt", "truncated", "dropped"],
)
@DOWNLOADERS
def test_bad_bodies_are_caught_and_fetched_again(
    tmp_path: Path, hubs: dict, downloader: str, tiny_qwen2_dir: Path, fault: Fault
) -> None:
    hf = hubs["huggingface"]
    hf.faults.add(WEIGHTS, fault, times=1, methods=("GET",))
    plan, ws = make_plan(tmp_path, urls_of(hubs, "huggingface"), fetch_downloader=downloader)
    manifest = fetch(plan, ws, policy=FAST, progress=False)
    assert hf.faults.pending() == 0
    assert len(downloads(hf)) >= 2
    local = ws.model_dir(QWEN_ID) / "model.safetensors"
    assert sha256_file(local) == sha256_file(tiny_qwen2_dir / "model.safetensors")
    assert manifest.model.mirror == "huggingface"


@DOWNLOADERS
def test_persistently_corrupt_mirror_is_never_reported_done(
    tmp_path: Path, hubs: dict, downloader: str
) -> None:
    for name in ("huggingface", "hf-mirror"):
        hubs[name].faults.add(WEIGHTS, Fault.corrupt(), times=100, methods=("GET",))
    plan, ws = make_plan(
        tmp_path, urls_of(hubs, "huggingface", "hf-mirror"), fetch_downloader=downloader
    )
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
    plan, ws = make_plan(
        tmp_path,
        urls_of(hubs, "huggingface"),
        dataset="openai/gsm8k",
        modelscope_dataset="openai/gsm8k",
    )
    with pytest.raises(MirrorsFailed, match="expected \\{'train': 7473, 'test': 1319\\}"):
        fetch(plan, ws, policy=FAST, progress=False)
    assert not ws.split_path("train").exists()


def test_disk_is_checked_before_the_first_byte(
    tmp_path: Path, hubs: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=10 * 2**20))
    plan, ws = make_plan(tmp_path, urls_of(hubs, "huggingface"))
    with pytest.raises(EnvironmentUnfit) as info:
        fetch(plan, ws, policy=FAST, progress=False)
    assert info.value.exit_code == 3
    assert "GiB free" in str(info.value) and "need" in str(info.value)
    assert not hubs["huggingface"].requests("/resolve/")


@DOWNLOADERS
def test_token_goes_to_hugging_face_only_and_is_never_written(
    tmp_path: Path, hubs: dict, downloader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "hf_testTOKENvalue0123456789"
    monkeypatch.setenv("HF_TOKEN", secret)
    hubs["huggingface"].faults.add(
        r"/api/models/", Fault.http(404), times=1
    )  # push the model to hf-mirror
    plan, ws = make_plan(
        tmp_path, urls_of(hubs, "huggingface", "hf-mirror"), fetch_downloader=downloader
    )
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
    args = [
        "--json",
        "--workspace",
        str(tmp_path / "ws"),
        "fetch",
        "--region",
        "global",
        "--mirror",
        "huggingface",
    ]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["model"]["mirror"] == "huggingface" and doc["dataset"]["outputs"]

    env["GRPO_BOOTSTRAP_HF_ENDPOINT"] = closed_loopback_url()
    args[2] = str(tmp_path / "other")
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 4
    assert json.loads(result.stdout)["exit_code"] == 4
    assert (
        "huggingface (http://127.0.0.1:" in result.stderr and "after 2 attempt(s)" in result.stderr
    )


def test_the_fetch_table_keeps_repo_ids_and_paths_whole_past_80_columns(
    tmp_path: Path, hubs: dict
) -> None:
    from click.testing import CliRunner

    from bootstrap.cli import main

    workspace = tmp_path / "a-workspace-whose-path-alone-takes-most-of-an-80-column-line"
    env = {"GRPO_BOOTSTRAP_HF_ENDPOINT": hubs["huggingface"].url, "GRPO_BOOTSTRAP_DATASET": MINI}
    args = ["--workspace", str(workspace), "fetch", "--region", "global", "--mirror", "huggingface"]
    result = CliRunner().invoke(main, args, env=env)  # stdout is no terminal: rich's 80 columns
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    model_dir = str(Workspace(workspace).model_dir(QWEN_ID))
    assert len(model_dir) > 80
    assert any(QWEN_ID in line and model_dir in line for line in lines), result.stdout
    assert any(
        MINI in line and str(Workspace(workspace).data_dir / "raw") in line for line in lines
    )


def test_the_modelscope_clients_logs_go_through_our_handlers(
    tmp_path: Path, hubs: dict, caplog: pytest.LogCaptureFixture, root_records: list
) -> None:
    # modelscope_hub's logger brings its own stderr handler; during fetch its records must take
    # the root handlers instead, where the CLI's token filter and -q/-v levels sit.
    import logging

    import modelscope_hub.api  # noqa: F401 - the library's own setup is made at its import

    caplog.set_level(logging.DEBUG)
    plan, ws = make_plan(tmp_path, urls_of(hubs, "modelscope"), region="cn")
    library = logging.getLogger("modelscope_hub")
    assert library.handlers or not library.propagate  # what fetch must put back
    before = (library.handlers[:], library.propagate, library.level)
    fetch(plan, ws, policy=FAST, progress=False)
    assert any(r.name.startswith("modelscope_hub") for r in root_records)
    assert (library.handlers, library.propagate, library.level) == before  # its setup is back


# --- stalls: Xet storage that cannot be reached, bodies that stop ------------------------------


def fetch_or_fail(plan, ws, within_s: float = 120, **kwargs: Any):
    """fetch in a thread; a fetch still running after `within_s` hung (the case under test)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["manifest"] = fetch(plan, ws, **kwargs)
        except Exception as exc:  # handed to the test below  # noqa: BLE001
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(within_s)
    if worker.is_alive():
        pytest.fail(f"fetch still running after {within_s:g} s: a stalled transfer was not stopped")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["manifest"]


@pytest.fixture
def tarpit() -> Iterator[str]:
    """A host that accepts connections and never answers: a CAS server blocked on the way."""
    with FakeServer(Reply(hang=True)) as server:
        yield server.url


def test_unreachable_xet_storage_falls_back_to_plain_http_on_the_same_mirror(
    tmp_path: Path, hubs: dict, tarpit: str, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("hf_xet")  # pinned in the test dependencies: present wherever CI runs
    hf = hubs["huggingface"]
    hf.advertise_xet(cas_url=tarpit)
    plan, ws = make_plan(
        tmp_path, urls_of(hubs, "huggingface", "hf-mirror"), fetch_downloader="hub", fetch_stall_s=2
    )
    manifest = fetch_or_fail(plan, ws, policy=FAST, progress=False)
    assert manifest.model.mirror == "huggingface" and manifest.model.failed_mirrors == []
    assert hf.requests("/xet-read-token/")  # huggingface_hub did go for Xet first
    assert downloads(hf)  # and then fetched the weights over plain HTTP from the same mirror
    assert "HF_HUB_DISABLE_XET=1" in caplog.text
    assert not hub_calls(hubs["hf-mirror"])


def test_a_mirror_that_stalls_over_plain_http_too_is_left_for_the_next(
    tmp_path: Path, hubs: dict, tarpit: str
) -> None:
    hf = hubs["huggingface"]
    hf.advertise_xet(cas_url=tarpit)
    hf.faults.add(WEIGHTS, Fault.stall(60, fraction=0.3), times=100, methods=("GET",))
    plan, ws = make_plan(
        tmp_path, urls_of(hubs, "huggingface", "hf-mirror"), fetch_downloader="hub", fetch_stall_s=2
    )
    manifest = fetch_or_fail(plan, ws, policy=FAST, progress=False)
    assert manifest.model.mirror == "hf-mirror"
    (failed,) = manifest.model.failed_mirrors
    assert failed.mirror == "huggingface" and "no data for 2 s" in failed.error


@pytest.mark.skipif(NO_ARIA2C, reason="apt-get install aria2")
def test_aria2c_stalled_mid_file_is_stopped_and_resumed(tmp_path: Path, hubs: dict) -> None:
    hf = hubs["huggingface"]
    hf.faults.add(WEIGHTS, Fault.stall(60, fraction=0.5), times=1, methods=("GET",))
    plan, ws = make_plan(
        tmp_path, urls_of(hubs, "huggingface"), fetch_downloader="aria2c", fetch_stall_s=2,
        fetch_connections=1,
    )  # fmt: skip
    manifest = fetch_or_fail(plan, ws, policy=FAST, progress=False)
    assert manifest.model.mirror == "huggingface" and manifest.model.downloader == "aria2c"
    stalled, *later = downloads(hf)
    assert stalled.fault == "stall"
    # the next aria2c went on from its control file: a range from where the stalled one stopped
    starts = [
        int(m.group(1))
        for r in later
        if (m := re.match(r"bytes=(\d+)-", r.headers.get("range", "")))
    ]
    assert any(0 < start <= stalled.body_bytes for start in starts), starts


def test_bytes_changed_in_place_are_noticed_offline_and_fetched_again_online(
    tmp_path: Path, hubs: dict
) -> None:
    plan, ws = make_plan(tmp_path, urls_of(hubs, "huggingface"))
    fetch(plan, ws, policy=FAST, progress=False)
    weights = ws.model_dir(QWEN_ID) / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-16] + bytes(b ^ 0xFF for b in original[-16:]))  # same size
    with pytest.raises(EnvironmentUnfit, match=r"model\.safetensors: its contents changed"):
        fetch(plan, ws, policy=FAST, progress=False, offline=True)
    hubs["huggingface"].clear_records()
    fetch(plan, ws, policy=FAST, progress=False)
    assert weights.read_bytes() == original and downloads(hubs["huggingface"])


def test_a_new_pinned_commit_is_fetched_again_not_taken_for_the_one_on_disk(
    tmp_path: Path, hubs: dict, tiny_qwen2_dir: Path
) -> None:
    plan, ws = make_plan(tmp_path, urls_of(hubs, "huggingface"))
    fetch(plan, ws, policy=FAST, progress=False)
    newer, sha = tmp_path / "newer", "b" * 40
    shutil.copytree(tiny_qwen2_dir, newer)
    (newer / "generation_config.json").write_text('{"note": "a later commit"}\n')
    hubs["huggingface"].add_repo(QWEN_ID, newer, sha=sha)
    # The files on disk still match their own record: only the pin says they are not wanted.
    repinned, ws = make_plan(tmp_path, urls_of(hubs, "huggingface"), model_revision=sha)
    with pytest.raises(EnvironmentUnfit, match=f"fetched at {PINNED[:12]}, the plan pins bbbb"):
        fetch(repinned, ws, policy=FAST, progress=False, offline=True)
    manifest = fetch(repinned, ws, policy=FAST, progress=False)
    assert manifest.model is not None and manifest.model.revision == sha
    assert (ws.model_dir(QWEN_ID) / "generation_config.json").read_text() == (
        newer / "generation_config.json"
    ).read_text()


def test_a_moved_or_copied_workspace_checks_its_own_files(tmp_path: Path, hubs: dict) -> None:
    plan, ws = make_plan(tmp_path, urls_of(hubs, "huggingface"))
    fetch(plan, ws, policy=FAST, progress=False)
    moved = tmp_path / "moved"
    ws.root.rename(moved)
    plan, ws = make_plan(tmp_path, {}, workspace=moved)
    assert fetch(plan, ws, policy=FAST, progress=False, offline=True).model is not None
    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    (copy / "models" / "Qwen--Qwen2.5-3B-Instruct" / "config.json").write_text("{}")
    plan, copied = make_plan(tmp_path, {}, workspace=copy)
    with pytest.raises(
        EnvironmentUnfit, match=r"config\.json"
    ):  # the copy's own file, not the original's
        fetch(plan, copied, policy=FAST, progress=False, offline=True)
    plan, ws = make_plan(tmp_path, {}, workspace=moved)
    assert fetch(plan, ws, policy=FAST, progress=False, offline=True).model is not None


def test_a_truncated_manifest_is_verified_again_not_a_traceback(tmp_path: Path, hubs: dict) -> None:
    plan, ws = make_plan(tmp_path, urls_of(hubs, "huggingface"))
    fetch(plan, ws, policy=FAST, progress=False)
    ws.manifest.write_text(ws.manifest.read_text()[:100])  # cut short by a full disk, say
    with pytest.raises(EnvironmentUnfit, match=f"model {QWEN_ID}"):
        fetch(plan, ws, policy=FAST, progress=False, offline=True)
    manifest = fetch(plan, ws, policy=FAST, progress=False)
    assert manifest.model is not None and json.loads(ws.manifest.read_text())["model"]


def test_a_repository_no_mirror_has_exits_2_naming_its_id_and_revision(
    tmp_path: Path, hubs: dict
) -> None:
    plan, ws = make_plan(
        tmp_path, urls_of(hubs, "huggingface", "hf-mirror"), model="nobody/no-such-model"
    )
    with pytest.raises(MirrorsFailed) as caught:  # ModelScope could not be reached: not sure
        fetch(plan, ws, policy=FAST, progress=False)
    assert "huggingface (" in str(caught.value) and "nobody/no-such-model@main" in str(caught.value)
    plan, ws = make_plan(tmp_path, urls_of(hubs, "huggingface"), model="nobody/no-such-model",
                         mirror="huggingface")  # fmt: skip
    with pytest.raises(ConfigError) as caught:  # every mirror asked answered: it does not exist
        fetch(plan, ws, policy=FAST, progress=False)
    message = str(caught.value)
    assert caught.value.exit_code == 2 and "not found on any mirror" in message
    assert "nobody/no-such-model@main" in message and "check the model id and revision" in message


def test_each_large_file_gets_an_aria2c_of_its_own_and_the_small_ones_share_one() -> None:
    mib = 1024**2
    shards = [aria2.Item(url=f"u{i}", path=f"s{i}", size=size * mib)
              for i, size in enumerate([3786, 2098, 64])]  # fmt: skip
    small = [aria2.Item(url="c", path="config.json", size=700),
             aria2.Item(url="t", path="tokenizer.json", size=7 * mib),
             aria2.Item(url="r", path="README.md")]  # fmt: skip
    assert [[i.path for i in g] for g in aria2.groups(shards + small)] == [
        ["s0"],
        ["s1"],
        ["s2"],
        ["config.json", "tokenizer.json", "README.md"],
    ]
    # More large files than processes: largest first, each to the process with the fewest bytes.
    many = [aria2.Item(url=str(n), path=str(n), size=n * 100 * mib) for n in range(1, 8)]
    buckets = aria2.groups(many, most=3)
    assert [[int(i.path) for i in g] for g in buckets] == [[7, 2, 1], [6, 3], [5, 4]]
    assert aria2.groups(small) == [small]
