"""The catalog: which hubs serve each artefact, under which id, at which pinned revision.

Any model or dataset id can be used; the catalog only adds what is known about the default
ones (the ModelScope id where it differs from the Hugging Face one, the pinned revision, the
dataset's file layout).  A config entry (``modelscope_model`` / ``modelscope_dataset``) maps an
id that is not in the catalog.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from bootstrap.config import HF_MIRROR, HUGGINGFACE, MODELSCOPE, JobConfig

MirrorKind = Literal["hf", "modelscope", "local"]
RepoType = Literal["model", "dataset"]


class Mirror(BaseModel, frozen=True):
    """One place that speaks a hub's API: huggingface.co, hf-mirror.com, ModelScope or a proxy."""

    name: str
    kind: MirrorKind
    endpoint: str


class Artefact(BaseModel, frozen=True):
    """A repo as the hubs know it.  Revisions are per hub: their commit histories differ."""

    repo_type: RepoType
    hf_id: str
    modelscope_id: str
    hf_revision: str | None = None
    modelscope_revision: str | None = None
    config_name: str | None = None  # the dataset's subset (GSM8K: "main")


class Source(BaseModel, frozen=True):
    """One attempt in the ordered list that fetch walks: a mirror plus the id it knows."""

    mirror: str
    kind: MirrorKind
    endpoint: str
    repo_id: str
    repo_type: RepoType
    revision: str | None
    reason: str


CATALOG: dict[tuple[RepoType, str], Artefact] = {
    ("model", "Qwen/Qwen2.5-3B-Instruct"): Artefact(
        repo_type="model",
        hf_id="Qwen/Qwen2.5-3B-Instruct",
        modelscope_id="Qwen/Qwen2.5-3B-Instruct",
        hf_revision="aa8e72537993ba99e69dfaafa59ed015b17504d1",
    ),
    # AI-ModelScope/gsm8k mirrors the HF parquet layout (main/{train,test}-00000-of-00001.parquet).
    # GSM8K's content is pinned by its row counts (hub/dataset.py); the commit served is recorded.
    ("dataset", "openai/gsm8k"): Artefact(
        repo_type="dataset",
        hf_id="openai/gsm8k",
        modelscope_id="AI-ModelScope/gsm8k",
        config_name="main",
    ),
}


def builtin_mirrors(config: JobConfig) -> list[Mirror]:
    """The three public hubs (endpoints from config) plus the user's extra HF-API mirrors."""
    ep = config.endpoints
    mirrors = [Mirror(name=n, kind="hf", endpoint=u.rstrip("/")) for n, u in _extra(config)]
    return [
        *mirrors,
        Mirror(name=HUGGINGFACE, kind="hf", endpoint=ep.hf_endpoint),
        Mirror(name=HF_MIRROR, kind="hf", endpoint=ep.hf_mirror_endpoint),
        Mirror(name=MODELSCOPE, kind="modelscope", endpoint=ep.modelscope_endpoint),
    ]


def _extra(config: JobConfig) -> list[tuple[str, str]]:
    return [tuple(entry.split("=", 1)) for entry in config.extra_mirrors]  # type: ignore[misc]


def artefact(config: JobConfig, repo_type: RepoType) -> Artefact:
    """The model or dataset of this job, with config overrides applied to the catalog entry."""
    if repo_type == "model":
        hf_id, ms_id, rev = config.model, config.modelscope_model, config.model_revision
    else:
        hf_id, ms_id, rev = config.dataset, config.modelscope_dataset, config.dataset_revision
    known = CATALOG.get((repo_type, hf_id))
    base = known or Artefact(repo_type=repo_type, hf_id=hf_id, modelscope_id=hf_id)
    update: dict[str, object] = {}
    if ms_id:
        update["modelscope_id"] = ms_id
    if rev:  # an explicit revision is an HF commit/branch; ModelScope keeps its own pin
        update["hf_revision"] = rev
    if repo_type == "dataset":
        update["config_name"] = config.dataset_config
    return base.model_copy(update=update)
