"""The fake hubs are only worth something if the REAL clients accept them.

These tests drive huggingface_hub, datasets and modelscope against the loopback servers, and pin
down what each client does natively when a fault is injected (retried or not, resumed or not,
corruption caught or not).  The fetch layer builds its own retry and verification on top of
exactly these behaviours, so a client upgrade that changes one of them should fail here first.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from tests.fakes.assets import write_gsm8k
from tests.fakes.fixtures import GSM8K_HF_ID, GSM8K_MS_ID, SMOLLM2_ID
from tests.fakes.hf_hub import FakeHFHub
from tests.fakes.modelscope_hub import FILES_LISTING_CAP, FakeModelScope
from tests.fakes.server import Fault

ROOT = Path(__file__).resolve().parents[1]
MODEL_PATTERNS = ["*.safetensors", "*.json", "tokenizer*", "*.jinja"]
# Larger than huggingface_hub's 10 MB read chunk, so a resumed download can start mid-file.
BIG_FILE_SIZE = 24 * 1024 * 1024


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@pytest.fixture(scope="module")
def big_repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model-shaped repo with a 24 MB random weight file: fast to serve, big enough to resume."""
    root = tmp_path_factory.mktemp("big-repo")
    (root / "model.safetensors").write_bytes(os.urandom(BIG_FILE_SIZE))
    (root / "config.json").write_text('{"model_type": "llama"}\n')
    return root


@pytest.fixture
def hf_big(big_repo_dir: Path) -> Iterator[FakeHFHub]:
    with FakeHFHub() as hub:
        hub.add_repo("acme/big", big_repo_dir)
        yield hub


@pytest.fixture
def ms_big(
    big_repo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeModelScope]:
    monkeypatch.setenv("MODELSCOPE_HOME", str(tmp_path / "ms-home"))
    with FakeModelScope() as hub:
        hub.add_repo("acme/big", big_repo_dir)
        yield hub


# --- assets ----------------------------------------------------------------------------------


def test_gsm8k_rows_have_real_arithmetic(tmp_path: Path) -> None:
    paths = write_gsm8k(tmp_path, train_rows=200, test_rows=20, seed=3)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths.values()) == [
        "main/test-00000-of-00001.parquet",
        "main/train-00000-of-00001.parquet",
    ]
    assert "config_name: main" in (tmp_path / "README.md").read_text()
    train = pq.read_table(paths["train"])
    assert train.column_names == ["question", "answer"] and train.num_rows == 200
    assert pq.read_table(paths["test"]).num_rows == 20
    finals = []
    for answer in train.column("answer").to_pylist():
        steps = re.findall(r"<<([^=>]+)=([^>]+)>>", answer)
        assert steps, answer
        for expr, result in steps:
            # Annotations hold only digits and + - * /: eval acts as the calculator here.
            assert eval(expr, {"__builtins__": {}}) == float(result), answer
        final = answer.rsplit("#### ", 1)[1]
        assert float(final.replace(",", "")) == float(steps[-1][1])
        finals.append(final)
    assert any(int(f.replace(",", "")) >= 1000 for f in finals)
    assert any("," in f for f in finals), "some gold answers should keep the thousands comma"
    # Same seed, same bytes: fixtures and cached copies agree.
    again = write_gsm8k(tmp_path / "again", train_rows=200, test_rows=20, seed=3)
    assert sha256_of(again["train"]) == sha256_of(paths["train"])


def test_tiny_qwen2_repo_is_a_qwen2_checkpoint(tiny_qwen2_dir: Path, smollm2_dir: Path) -> None:
    from safetensors import safe_open

    config = json.loads((tiny_qwen2_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["architectures"] == ["Qwen2ForCausalLM"]
    with safe_open(tiny_qwen2_dir / "model.safetensors", "pt") as weights:
        names = set(weights.keys())
    assert "model.layers.1.self_attn.q_proj.bias" in names  # Qwen2 has attention biases, Llama not
    assert (tiny_qwen2_dir / "tokenizer.json").read_bytes() == (
        smollm2_dir / "tokenizer.json"
    ).read_bytes()


# --- Hugging Face: the real clients ------------------------------------------------------------


def test_snapshot_download_smollm2_then_generate(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    import torch
    from huggingface_hub import HfApi, snapshot_download
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(
        snapshot_download(
            SMOLLM2_ID, endpoint=fake_hf_hub.url, allow_patterns=MODEL_PATTERNS, cache_dir=tmp_path
        )
    )
    repo = fake_hf_hub.repos[("model", SMOLLM2_ID)]
    assert path.name == repo.sha  # snapshot folder is the resolved commit
    listing = {
        f.path: f
        for f in HfApi(endpoint=fake_hf_hub.url).list_repo_tree(SMOLLM2_ID, recursive=True)
        if hasattr(f, "lfs")
    }
    assert listing["model.safetensors"].lfs.sha256 == sha256_of(path / "model.safetensors")
    assert sorted(p.name for p in path.iterdir()) == sorted(repo.files)

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    reply = tokenizer.decode(out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "5" in reply, reply


def test_snapshot_download_dataset_then_load_parquet_locally(
    fake_hf_hub: FakeHFHub, tmp_path: Path
) -> None:
    import datasets
    from huggingface_hub import snapshot_download

    path = Path(
        snapshot_download(
            GSM8K_HF_ID, repo_type="dataset", endpoint=fake_hf_hub.url, cache_dir=tmp_path
        )
    )
    files = {
        "train": str(path / "main/train-00000-of-00001.parquet"),
        "test": str(path / "main/test-00000-of-00001.parquet"),
    }
    ds = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "ds"))
    assert (ds["train"].num_rows, ds["test"].num_rows) == (64, 16)
    assert ds["train"].column_names == ["question", "answer"]


def test_datasets_load_dataset_through_hf_endpoint(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    # datasets and huggingface_hub read HF_ENDPOINT once, at import: a fresh interpreter is needed.
    script = (
        "import json, datasets\n"
        f"ds = datasets.load_dataset({GSM8K_HF_ID!r}, 'main')\n"
        "rows = {k: v.num_rows for k, v in ds.items()}\n"
        "print(json.dumps(rows | {'q': ds['test'][0]['question']}))\n"
    )
    env = os.environ | {
        "HF_ENDPOINT": fake_hf_hub.url,
        "HF_HOME": str(tmp_path / "hf"),
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["train"], result["test"]) == (64, 16)
    first_test = pq.read_table(
        fake_hf_hub.repos[("dataset", GSM8K_HF_ID)].root / "main/test-00000-of-00001.parquet"
    )
    assert result["q"] == first_test.column("question")[0].as_py()
    assert fake_hf_hub.requests(
        r"/datasets/openai/gsm8k/resolve/.*/main/train-00000-of-00001\.parquet", "GET"
    )


def test_tree_listing_pages_through_link_header(gsm8k_repo_dir: Path) -> None:
    from huggingface_hub import HfApi

    with FakeHFHub(tree_page_size=2) as hub:
        hub.add_repo(GSM8K_HF_ID, gsm8k_repo_dir, repo_type="dataset")
        entries = list(
            HfApi(endpoint=hub.url).list_repo_tree(GSM8K_HF_ID, repo_type="dataset", recursive=True)
        )
        assert sorted(e.path for e in entries) == [
            "README.md",
            "main",
            "main/test-00000-of-00001.parquet",
            "main/train-00000-of-00001.parquet",
        ]
        assert len(hub.requests("/tree/")) == 2


def test_missing_repo_revision_and_file_map_to_client_errors(
    hf_big: FakeHFHub, tmp_path: Path
) -> None:
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("acme/nope", endpoint=hf_big.url, cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        snapshot_download("acme/big", revision="v9", endpoint=hf_big.url, cache_dir=tmp_path)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("acme/big", "missing.bin", endpoint=hf_big.url, cache_dir=tmp_path)


def test_token_is_required_and_recorded(big_repo_dir: Path, tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    with FakeHFHub(token="hf_secret") as hub:
        hub.add_repo("acme/big", big_repo_dir)
        with pytest.raises(HfHubHTTPError) as refused:
            hf_hub_download(
                "acme/big", "config.json", endpoint=hub.url, cache_dir=tmp_path, token=False
            )
        assert refused.value.response.status_code == 401
        hf_hub_download(
            "acme/big", "config.json", endpoint=hub.url, cache_dir=tmp_path, token="hf_secret"
        )
        assert [r.auth for r in hub.requests("config.json", "GET")] == ["Bearer hf_secret"]
        assert all(r.headers.get("authorization") in (None, "<redacted>") for r in hub.records)


# --- Hugging Face: what the client does natively when the mirror misbehaves --------------------


def _hf_download(hub: FakeHFHub, cache: Path) -> Path:
    from huggingface_hub import snapshot_download

    return (
        Path(snapshot_download("acme/big", endpoint=hub.url, cache_dir=cache)) / "model.safetensors"
    )


def _no_partial_files(cache: Path) -> bool:
    return not [
        p
        for p in cache.rglob("*")
        if p.name.endswith(".incomplete") or p.name == "model.safetensors"
    ]


def test_hf_retries_429_on_file_get_honouring_retry_after(
    hf_big: FakeHFHub, tmp_path: Path
) -> None:
    hf_big.faults.add(
        r"resolve/.*model\.safetensors", Fault.http(429, retry_after=1), methods=("GET",)
    )
    got = _hf_download(hf_big, tmp_path)
    assert sha256_of(got) == hf_big.repos[("model", "acme/big")].files["model.safetensors"].sha256
    assert [r.status for r in hf_big.requests("model.safetensors", "GET")] == [429, 200]


@pytest.mark.parametrize("status", [500, 503])
def test_hf_does_not_retry_5xx_on_file_get(hf_big: FakeHFHub, tmp_path: Path, status: int) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    hf_big.faults.add(
        r"resolve/.*model\.safetensors", Fault.http(status, retry_after=1), methods=("GET",)
    )
    with pytest.raises(HfHubHTTPError) as failed:
        _hf_download(hf_big, tmp_path)
    assert failed.value.response.status_code == status
    assert len(hf_big.requests("model.safetensors", "GET")) == 1
    assert _no_partial_files(tmp_path)


def test_hf_retries_5xx_on_metadata_head(hf_big: FakeHFHub, tmp_path: Path) -> None:
    hf_big.faults.add(r"resolve/.*model\.safetensors", Fault.http(500), methods=("HEAD",))
    _hf_download(hf_big, tmp_path)
    assert [r.status for r in hf_big.requests("model.safetensors", "HEAD")] == [500, 200]


def test_hf_gives_up_at_once_when_repo_info_fails(hf_big: FakeHFHub, tmp_path: Path) -> None:
    from huggingface_hub.errors import LocalEntryNotFoundError

    hf_big.faults.add(r"^/api/models/", Fault.http(503), times=3)
    with pytest.raises(LocalEntryNotFoundError):
        _hf_download(hf_big, tmp_path)
    assert len(hf_big.requests("^/api/models/")) == 1


def test_hf_resumes_a_truncated_body_with_a_range_request(
    hf_big: FakeHFHub, tmp_path: Path
) -> None:
    hf_big.faults.add(r"resolve/.*model\.safetensors", Fault.truncate(0.75), methods=("GET",))
    got = _hf_download(hf_big, tmp_path)
    assert sha256_of(got) == hf_big.repos[("model", "acme/big")].files["model.safetensors"].sha256
    first, second = hf_big.requests("model.safetensors", "GET")
    assert (first.fault, second.status) == ("truncate", 206)
    # The client keeps whole 10 MB read chunks only, so it resumes at a chunk boundary.
    assert second.headers["range"] == "bytes=10485760-"
    assert hf_big.bytes_sent("model.safetensors") < 2 * BIG_FILE_SIZE


def test_hf_fails_on_a_connection_reset_mid_body(hf_big: FakeHFHub, tmp_path: Path) -> None:
    hf_big.faults.add(r"resolve/.*model\.safetensors", Fault.drop(0.5), methods=("GET",))
    with pytest.raises(httpx.ReadError):
        _hf_download(hf_big, tmp_path)
    assert len(hf_big.requests("model.safetensors", "GET")) == 1
    assert _no_partial_files(tmp_path)


def test_hf_resumes_after_a_stall_past_its_read_timeout(
    hf_big: FakeHFHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)
    hf_big.faults.add(
        r"resolve/.*model\.safetensors", Fault.stall(3, fraction=0.6), methods=("GET",)
    )
    got = _hf_download(hf_big, tmp_path)
    assert sha256_of(got) == hf_big.repos[("model", "acme/big")].files["model.safetensors"].sha256
    assert [r.status for r in hf_big.requests("model.safetensors", "GET")] == [200, 206]


def test_hf_accepts_corrupt_content_without_noticing(hf_big: FakeHFHub, tmp_path: Path) -> None:
    # huggingface_hub checks only the size: verifying sha256 is the fetch layer's job.
    hf_big.faults.add(r"resolve/.*model\.safetensors", Fault.corrupt(), methods=("GET",))
    from huggingface_hub import HfApi

    got = _hf_download(hf_big, tmp_path)
    assert got.stat().st_size == BIG_FILE_SIZE
    assert sha256_of(got) != hf_big.repos[("model", "acme/big")].files["model.safetensors"].sha256
    # The client's own checker does catch it, from the tree listing (sha256 for LFS files, git
    # blob ids for the rest: config.json passing proves the fake's blob ids are right).
    report = HfApi(endpoint=hf_big.url).verify_repo_checksums("acme/big", cache_dir=tmp_path)
    assert report.checked_count == 2
    assert [m["path"] for m in report.mismatches] == ["model.safetensors"]


# --- ModelScope --------------------------------------------------------------------------------


def test_modelscope_downloads_model_and_dataset(
    fake_modelscope: FakeModelScope, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelscope import snapshot_download
    from modelscope.hub.snapshot_download import dataset_snapshot_download

    monkeypatch.setenv("MODELSCOPE_HOME", str(tmp_path / "ms-home"))
    model = Path(
        snapshot_download(
            SMOLLM2_ID,
            endpoint=fake_modelscope.url,
            cache_dir=str(tmp_path),
            allow_patterns=MODEL_PATTERNS,
        )
    )
    repo = fake_modelscope.repos[("model", SMOLLM2_ID)]
    assert sorted(p.name for p in model.iterdir()) == sorted(repo.files)
    assert sha256_of(model / "model.safetensors") == repo.files["model.safetensors"].sha256

    data = Path(
        dataset_snapshot_download(
            GSM8K_MS_ID, endpoint=fake_modelscope.url, local_dir=str(tmp_path / "gsm8k")
        )
    )
    assert pq.read_table(data / "main/train-00000-of-00001.parquet").num_rows == 64
    assert fake_modelscope.requests(r"/api/v1/datasets/AI-ModelScope/gsm8k/repo/tree")


def test_modelscope_endpoint_from_environment(
    ms_big: FakeModelScope, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modelscope_hub.config
    from modelscope import snapshot_download

    # modelscope-hub reads MODELSCOPE_ENDPOINT (and MODELSCOPE_CACHE) once per process into a
    # global default config; without this reset the endpoint of the first use sticks.
    monkeypatch.setattr(modelscope_hub.config, "_default_config", None)
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", ms_big.url)
    snapshot_download("acme/big", cache_dir=str(tmp_path), allow_patterns=["config.json"])
    assert ms_big.requests("FilePath=config.json", "GET")


def _ms_download(hub: FakeModelScope, cache: Path) -> Path:
    from modelscope import snapshot_download

    return (
        Path(snapshot_download("acme/big", endpoint=hub.url, cache_dir=str(cache)))
        / "model.safetensors"
    )


def test_modelscope_retries_5xx_and_resumes_truncated_bodies(
    ms_big: FakeModelScope, tmp_path: Path
) -> None:
    ms_big.faults.add("FilePath=model", Fault.http(503, retry_after=0))
    ms_big.oss.faults.add("/modelscope-lfs/", Fault.truncate(0.5))  # the body comes from OSS
    got = _ms_download(ms_big, tmp_path)
    assert sha256_of(got) == ms_big.repos[("model", "acme/big")].files["model.safetensors"].sha256
    assert [r.status for r in ms_big.requests("FilePath=model")][:2] == [503, 302]
    from_oss = [(r.status, r.fault, r.headers.get("range")) for r in ms_big.oss.requests("")]
    assert from_oss[0] == (200, "truncate", None)
    assert from_oss[1][0] == 206 and from_oss[1][2] is not None


def test_modelscope_catches_corruption_and_retries(ms_big: FakeModelScope, tmp_path: Path) -> None:
    ms_big.oss.faults.add("/modelscope-lfs/", Fault.corrupt())
    got = _ms_download(ms_big, tmp_path)
    assert sha256_of(got) == ms_big.repos[("model", "acme/big")].files["model.safetensors"].sha256
    assert [r.fault for r in ms_big.oss.requests("/modelscope-lfs/")] == ["corrupt", None]


def test_modelscope_lfs_files_redirect_to_a_signed_url_on_another_host(
    ms_big: FakeModelScope, tmp_path: Path
) -> None:
    import httpx

    _ms_download(ms_big, tmp_path)
    f = ms_big.repos[("model", "acme/big")].files["model.safetensors"]
    (api,) = ms_big.requests("FilePath=model.safetensors", "GET")
    (oss,) = ms_big.oss.requests("/modelscope-lfs/", "GET")
    assert api.status == 302 and oss.status == 200 and "Signature=" in oss.query
    assert ms_big.oss.url.startswith("http://127.0.0.2:")  # a host of its own, as a CDN is
    with httpx.Client() as client:
        head = client.head(ms_big.oss.signed_url(f.sha256))
        assert head.headers["X-Linked-ETag"].strip('"') == f.sha256
        assert head.headers["ETag"] != f'"{f.sha256}"'  # OSS's own ETag, the MD5
        past_end = client.get(
            ms_big.oss.signed_url(f.sha256), headers={"Range": f"bytes={f.size}-"}
        )
        assert (
            past_end.status_code == 416 and past_end.headers["Content-Range"] == f"bytes */{f.size}"
        )
        unsigned = client.get(ms_big.oss.signed_url(f.sha256).split("?")[0])
        assert unsigned.status_code == 403 and "AccessDenied" in unsigned.text


def test_modelscope_inline_files_ignore_range_and_the_client_starts_over(
    ms_big: FakeModelScope, tmp_path: Path
) -> None:
    from modelscope import snapshot_download

    ms_big.faults.add("FilePath=config.json", Fault.truncate(0.5), methods=("GET",))
    got = Path(
        snapshot_download(
            "acme/big", endpoint=ms_big.url, cache_dir=str(tmp_path), allow_patterns=["config.json"]
        )
    )
    repo = ms_big.repos[("model", "acme/big")]
    assert sha256_of(got / "config.json") == repo.files["config.json"].sha256
    cut, again = ms_big.requests("FilePath=config.json", "GET")
    assert cut.fault == "truncate" and again.headers.get("range")  # the client asked to resume
    assert again.status == 200  # and got the whole file, as the service answers


def test_modelscope_listings_as_the_service_gives_them(big_repo_dir: Path, tmp_path: Path) -> None:
    import httpx

    many = tmp_path / "many"
    for i in range(FILES_LISTING_CAP + 10):
        (many / f"part{i % 4}" / f"{i}.json").parent.mkdir(parents=True, exist_ok=True)
        (many / f"part{i % 4}" / f"{i}.json").write_text("{}")
    with FakeModelScope(no_sha256=("config.json",)) as hub, httpx.Client() as client:
        repo = hub.add_repo("acme/big", big_repo_dir)
        hub.add_repo("acme/many", many)
        hub.add_repo("acme/data", big_repo_dir, repo_type="dataset")
        got = client.get(f"{hub.url}/api/v1/models/acme/big/repo/files?Revision=master").json()
        entries = {e["Path"]: e for e in got["Data"]["Files"]}
        assert entries["model.safetensors"]["Revision"] == repo.sha  # the newest commit
        assert entries["config.json"]["Revision"] != repo.sha  # unchanged since an older one
        assert "Sha256" not in entries["config.json"] and "Sha256" in entries["model.safetensors"]
        cut = client.get(f"{hub.url}/api/v1/models/acme/many/repo/files?Recursive=True").json()
        assert len(cut["Data"]["Files"]) == FILES_LISTING_CAP  # cut, without a word
        hub.fail_listing()
        failed = client.get(f"{hub.url}/api/v1/datasets/acme/data/repo/tree?PageNumber=1")
        assert failed.status_code == 200 and failed.json()["Success"] is False


def test_modelscope_does_not_retry_404(ms_big: FakeModelScope, tmp_path: Path) -> None:
    ms_big.faults.add("FilePath=model", Fault.http(404))
    with pytest.raises(Exception, match="404"):
        _ms_download(ms_big, tmp_path)
    assert len(ms_big.requests("FilePath=model")) == 1
    assert not list(tmp_path.rglob("model.safetensors"))


def _ms_uploadable(root: Path) -> Path:
    """A folder with one file modelscope_hub commits inline and one it sends as a blob."""
    root.mkdir()
    (root / "adapter_config.json").write_text('{"r": 8}\n')
    (root / "adapter_model.safetensors").write_bytes(os.urandom(70_000))
    return root


def test_modelscope_upload_refused_without_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelscope_hub import AuthenticationError, HubApi

    monkeypatch.setenv("MODELSCOPE_HOME", str(tmp_path / "ms-home"))
    with FakeModelScope() as hub:
        with pytest.raises(AuthenticationError) as caught:
            HubApi(endpoint=hub.url, token="").create_repo("me/x", "model")
        assert caught.value.status_code == 401
        assert [(r.path, r.auth, r.status) for r in hub.records] == [("/api/v1/models", None, 401)]


def test_modelscope_upload_folder_commits_what_it_could_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """upload_folder is not all-or-nothing: a blob refused, the inline file is still committed."""
    from modelscope_hub import HubApi, StorageError

    monkeypatch.setenv("MODELSCOPE_HOME", str(tmp_path / "ms-home"))
    folder = _ms_uploadable(tmp_path / "up")
    with FakeModelScope(token="ms-t") as hub:
        hub.faults.add(r"/info/lfs/objects/batch$", Fault.http(403), times=10)
        api = HubApi(endpoint=hub.url, token="ms-t")
        with pytest.raises(StorageError):
            api.upload_folder("me/x", "model", folder, use_cache=False, disable_tqdm=True)
        assert [c.paths for c in hub.commits] == [["adapter_config.json"]]
        assert hub.visibility == {"me/x": 5}, "upload_folder's own create makes it public"


# --- the server itself -------------------------------------------------------------------------


def test_range_requests_and_fault_plan_accounting(hf_big: FakeHFHub) -> None:
    repo = hf_big.repos[("model", "acme/big")]
    url = f"{hf_big.url}/acme/big/resolve/main/model.safetensors"
    data = (repo.root / "model.safetensors").read_bytes()
    with httpx.Client() as client:
        part = client.get(url, headers={"Range": "bytes=100-199"})
        assert (part.status_code, part.content) == (206, data[100:200])
        assert part.headers["content-range"] == f"bytes 100-199/{BIG_FILE_SIZE}"
        assert client.get(url, headers={"Range": f"bytes={BIG_FILE_SIZE}-"}).status_code == 416
        head = client.head(url)
        assert head.headers["x-linked-etag"] == f'"{repo.files["model.safetensors"].sha256}"'
        assert head.headers["x-repo-commit"] == repo.sha

        hf_big.faults.add("model", Fault.http(503, retry_after=7), times=2, methods=("GET",))
        assert client.head(url).status_code == 200  # HEAD is not in the fault's methods
        first = client.get(url, headers={"Range": "bytes=0-0"})
        assert (first.status_code, first.headers["retry-after"]) == (503, "7")
        assert hf_big.faults.pending() == 1
        assert client.get(url, headers={"Range": "bytes=0-0"}).status_code == 503
        assert client.get(url, headers={"Range": "bytes=0-0"}).status_code == 206
