"""`export --push hf:...`: the real huggingface_hub client against the loopback fake hub.

The exports directory is made by hand here (small files, described through the manifest
helpers), so the test is about the upload, not about building models.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants as hf_constants

from bootstrap.errors import BootstrapError, ConfigError, EnvironmentUnfit
from bootstrap.export import export
from bootstrap.export.manifest import ExportManifest, describe, read_manifest, write_manifest
from bootstrap.export.push import push
from bootstrap.hub.retry import RetryPolicy
from tests.export_helpers import make_lora_workspace
from tests.fakes.hf_hub import FakeHFHub
from tests.fakes.server import Fault

TOKEN = "hf_pushSecret0123456789abcdef"
REPO = "me/smol-grpo"
FAST = RetryPolicy(attempts=3, initial_wait_s=0.0, max_wait_s=0.0)
# Bigger than one read chunk of the loopback server, so the PUT body really streams.
GGUF_SIZE = 3 * 1024 * 1024 + 17


@pytest.fixture(autouse=True)
def _plain_lfs(monkeypatch: pytest.MonkeyPatch) -> None:
    """hf_xet is installed and would be used for uploads; the fake speaks plain LFS only."""
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)


@pytest.fixture
def hub() -> Iterator[FakeHFHub]:
    with FakeHFHub(token=TOKEN) as server:
        yield server


@pytest.fixture
def exports(tmp_path: Path) -> tuple[Path, ExportManifest]:
    """An exports directory with a LoRA, a GGUF and its Modelfile, and their manifest."""
    root = tmp_path / "exports"
    lora = root / "lora"
    lora.mkdir(parents=True)
    (lora / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16}\n')
    (lora / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    (lora / "tokenizer.json").write_text('{"model": {"type": "BPE"}}\n')
    gguf_dir = root / "gguf"
    gguf_dir.mkdir()
    (gguf_dir / "SmolLM2-GRPO-Q4_K_M.gguf").write_bytes(os.urandom(GGUF_SIZE))
    (gguf_dir / "Modelfile").write_text("FROM ./SmolLM2-GRPO-Q4_K_M.gguf\n")
    manifest = ExportManifest(
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct", adapter_sha256="ab" * 32, created=""
    )
    manifest.artefacts["lora"] = describe("lora", lora, root)
    manifest.artefacts["gguf-q4_k_m"] = describe(
        "gguf-q4_k_m", gguf_dir / "SmolLM2-GRPO-Q4_K_M.gguf", root, quantization="Q4_K_M"
    )
    manifest.artefacts["ollama"] = describe(
        "ollama", gguf_dir / "Modelfile", root, gguf="gguf-q4_k_m"
    )
    write_manifest(root, manifest)
    return root, manifest


def _all_files(manifest: ExportManifest, formats: list[str] | None = None) -> dict[str, str]:
    return {
        f.path: f.sha256
        for fmt, art in manifest.artefacts.items()
        if formats is None or fmt in formats
        for f in art.files
    }


def test_push_uploads_every_artefact_byte_identical(
    hub: FakeHFHub,
    exports: tuple[Path, ExportManifest],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root, manifest = exports
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)

    records = push(root, manifest, [f"hf:{REPO}"], hf_endpoint=hub.url, policy=FAST)

    assert len(hub.requests("/api/repos/create", "POST")) == 1
    assert len(hub.commits) == 1, "every artefact goes up in one commit"
    expected = _all_files(manifest)
    assert sorted(hub.commits[0].paths) == sorted(expected)
    for path, sha256 in expected.items():
        assert hashlib.sha256(hub.pushed_bytes(REPO, path)).hexdigest() == sha256, path
    # Weights and the GGUF went through LFS (batch, PUT, verify); small text inline.
    lfs_puts = hub.requests("/_lfs/upload/", "PUT")
    sizes = {r.path.rsplit("/", 1)[1]: int(r.headers["content-length"]) for r in lfs_puts}
    gguf = expected["gguf/SmolLM2-GRPO-Q4_K_M.gguf"]
    assert sizes == {gguf: GGUF_SIZE, expected["lora/adapter_model.safetensors"]: 4096}
    assert len(hub.requests("/_lfs/verify", "POST")) == 2
    # Every API request carried the token; the storage PUTs (presigned on the hub) did not.
    assert {r.auth for r in hub.records if r not in lfs_puts} == {f"Bearer {TOKEN}"}
    assert {r.auth for r in lfs_puts} == {None}
    [record] = records
    assert record.commit_sha == hub.commits[0].sha
    assert record.commit_url == f"{hub.url}/{REPO}/commit/{record.commit_sha}"
    assert record.target == f"hf:{REPO}" and sorted(record.files) == sorted(expected)
    # The token is nowhere in what we logged or returned.
    assert TOKEN not in record.model_dump_json()
    assert caplog.records, "the push logs what it does"
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


def test_push_chosen_formats_only_and_again_into_the_existing_repo(
    hub: FakeHFHub, exports: tuple[Path, ExportManifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, manifest = exports
    monkeypatch.setenv("HF_TOKEN", TOKEN)

    first = push(root, manifest, [f"hf:{REPO}"], hf_endpoint=hub.url, formats=["lora"], policy=FAST)
    assert sorted(hub.commits[0].paths) == sorted(_all_files(manifest, ["lora"]))
    assert first[0].formats == ["lora"]

    # The repository exists now (create answers 409, which exist_ok accepts).
    second = push(
        root, manifest, [f"hf:{REPO}"], hf_endpoint=hub.url, formats=["ollama"], policy=FAST
    )
    # The Modelfile takes the GGUF it points at along.
    assert hub.commits[1].paths == ["gguf/Modelfile", "gguf/SmolLM2-GRPO-Q4_K_M.gguf"]
    assert second[0].formats == ["ollama", "gguf-q4_k_m"]
    assert second[0].commit_sha != first[0].commit_sha
    assert (
        hub.pushed_bytes(REPO, "lora/adapter_config.json")
        == (root / "lora/adapter_config.json").read_bytes()
    )


def test_no_token_refuses_before_any_request(
    hub: FakeHFHub, exports: tuple[Path, ExportManifest]
) -> None:
    root, manifest = exports
    with pytest.raises(EnvironmentUnfit) as caught:
        push(root, manifest, [f"hf:{REPO}"], hf_endpoint=hub.url, policy=FAST)
    assert caught.value.exit_code == 3
    assert "HF_TOKEN is not set" in str(caught.value)
    assert hub.records == []


def test_modelscope_target_is_refused_up_front(
    hub: FakeHFHub, exports: tuple[Path, ExportManifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, manifest = exports
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(ConfigError, match="modelscope:me/x"):
        push(root, manifest, [f"hf:{REPO}", "modelscope:me/x"], hf_endpoint=hub.url, policy=FAST)
    assert hub.records == []


def test_503_on_commit_is_retried(
    hub: FakeHFHub, exports: tuple[Path, ExportManifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, manifest = exports
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub.faults.add(r"/commit/main$", Fault.http(503, retry_after=0), methods=("POST",))
    slept: list[float] = []

    [record] = push(
        root, manifest, [f"hf:{REPO}"], hf_endpoint=hub.url, policy=FAST, sleep=slept.append
    )

    commits = hub.requests(r"/commit/main$", "POST")
    assert [r.status for r in commits] == [503, 200]
    assert slept == [0.0]
    assert len(hub.commits) == 1 and record.commit_sha == hub.commits[0].sha
    for path, sha256 in _all_files(manifest).items():
        assert hashlib.sha256(hub.pushed_bytes(REPO, path)).hexdigest() == sha256


def test_401_is_not_retried_and_the_error_hides_the_token(
    exports: tuple[Path, ExportManifest],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root, manifest = exports
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    with FakeHFHub(token="hf_theRightOne") as hub:
        with pytest.raises(BootstrapError) as caught:
            push(root, manifest, [f"hf:{REPO}"], hf_endpoint=hub.url, policy=FAST)
        creates = hub.requests("/api/repos/create", "POST")
        commits = hub.requests("/commit/", "POST")
    assert [r.status for r in creates] == [401]
    assert len(commits) <= 1 and all(r.status == 401 for r in commits)
    assert "401" in str(caught.value) and f"hf:{REPO}" in str(caught.value)
    assert TOKEN not in str(caught.value)
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


def test_pushes_survive_in_the_manifest(
    exports: tuple[Path, ExportManifest], hub: FakeHFHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, manifest = exports
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    manifest.pushes = push(root, manifest, [f"hf:{REPO}"], hf_endpoint=hub.url, policy=FAST)
    write_manifest(root, manifest)
    again = read_manifest(root, manifest.base_model, manifest.adapter_sha256)
    assert again.pushes == manifest.pushes
    assert TOKEN not in (root / "manifest.json").read_text()


@pytest.mark.slow
def test_export_with_push_uploads_and_records_the_commit(
    tmp_path: Path, smollm2_dir: Path, hub: FakeHFHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    plan, ws = make_lora_workspace(
        tmp_path / "ws", smollm2_dir, push=[f"hf:{REPO}"], hf_endpoint=hub.url
    )

    manifest = export(plan, ws, ["lora"])

    [record] = manifest.pushes
    assert record.commit_sha == hub.commits[0].sha and record.formats == ["lora"]
    for entry in manifest.artefacts["lora"].files:
        pushed = hub.pushed_bytes(REPO, entry.path)
        assert hashlib.sha256(pushed).hexdigest() == entry.sha256, entry.path
    on_disk = read_manifest(ws.exports, manifest.base_model, manifest.adapter_sha256)
    assert on_disk.pushes == [record]


@pytest.mark.slow
def test_export_with_push_and_no_token_fails_before_any_work(
    tmp_path: Path, smollm2_dir: Path, hub: FakeHFHub
) -> None:
    plan, ws = make_lora_workspace(
        tmp_path / "ws", smollm2_dir, push=[f"hf:{REPO}"], hf_endpoint=hub.url
    )
    with pytest.raises(EnvironmentUnfit, match="HF_TOKEN is not set"):
        export(plan, ws, ["lora"])
    assert not ws.exports.exists()
    assert hub.records == []
