"""The demo: a whole run with no GPU and no network, through the same fetch path as a real job.

:func:`demo_hub` builds a tiny Qwen2 and a GSM8K-shaped dataset once under
``<workspace>/demo-assets``, serves them from a :class:`~bootstrap.demo.hub.LocalHub` on
127.0.0.1 and yields the config values that point the job at it.  The pipeline merges them into
its flags and runs as usual: detect, plan, fetch (huggingface_hub's snapshot_download, hashes
verified), train, evaluate, export.

    with demo_hub(workspace) as overrides:
        config = load_config(flags={**overrides, **user_flags}).config
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bootstrap.workspace import Workspace

DEMO_MODEL = "demo/tiny-qwen2"
DEMO_DATASET = "demo/gsm8k"
DEMO_SEED = 0
DEMO_TRAIN_ROWS = 64
DEMO_TEST_ROWS = 16
# The tiny model's pre-training (assets.warm_up), on rows of their own seed, apart from the
# served splits: enough that it writes GSM8K-like replies, and the XML layout in about one
# sample in five, a faint signal that GRPO then has to turn into the rule.
DEMO_WARM_UP: dict[str, Any] = {
    "rows": 2000,
    "xml_share": 0.2,
    "steps": 300,
    "learning_rate": 5e-3,
}
# What GRPO needs to turn that faint signal into the rule: 8 completions per prompt, so that a
# group mostly holds both kinds and has an advantage to learn from, and room for a whole XML
# reply (54-90 tokens).  Measured on 2 CPU cores beside another training job: a step takes
# about 0.18 s on one thread, so 200 steps train in under a minute.
DEMO_SIZES: dict[str, int] = {
    "max_steps": 200,
    "save_steps": 50,
    "num_generations": 8,
    "per_device_train_batch_size": 8,
    "max_completion_length": 112,
    "eval_max_new_tokens": 112,
    "sample_max_tokens": 112,
}
# A LoRA on a model this small moves at the recipe's 5e-6 far too slowly to see; one thread,
# since two spin against each other whenever another job takes a core (2-70 s a step).
DEMO_TRAINING: dict[str, Any] = {"learning_rate": 2e-3, "cpu_threads": 1}
# Part of the assets' directory name: bump it when what the builders write changes, so a
# workspace built by an older version gets fresh assets instead of stale ones.
ASSETS_VERSION = "2"


def demo_assets_dir(workspace: Workspace) -> Path:
    """Where the demo's generated repositories live inside the workspace."""
    return workspace.root / "demo-assets" / f"v{ASSETS_VERSION}-seed{DEMO_SEED}"


def demo_revision(repo_type: str, repo_id: str) -> str:
    """The commit the local hub serves a demo repository at, one per assets' version and seed.

    The demo pins it (``model_revision``, ``dataset_revision``): a finished fetch is never asked
    again of the hub, so without a new pin a workspace fetched from older assets would keep
    their model and train it.
    """
    from bootstrap.demo.hub import commit_sha_for

    return commit_sha_for(repo_type, f"{repo_id}@v{ASSETS_VERSION}-seed{DEMO_SEED}")


def build_demo_assets(root: Path) -> Path:
    """The model (``root/model``) and dataset (``root/dataset``) repos, built once, atomically."""
    from bootstrap.demo.assets import (
        build_atomically,
        build_tiny_qwen2,
        warm_up,
        write_gsm8k,
    )

    def build(tmp: Path) -> None:
        build_tiny_qwen2(tmp / "model", seed=DEMO_SEED)
        # write_gsm8k's splits take seeds seed*1000 and seed*1000+1: the next one is unused.
        warm_up(tmp / "model", seed=DEMO_SEED * 1000 + 2, **DEMO_WARM_UP)
        write_gsm8k(tmp / "dataset", DEMO_TRAIN_ROWS, DEMO_TEST_ROWS, seed=DEMO_SEED)

    return build_atomically(root, build)


@contextmanager
def demo_hub(workspace: Workspace) -> Iterator[dict[str, Any]]:
    """Serve the demo's model and dataset on loopback; yield the config flags that use them.

    The flags force the Hugging Face mirror (the local hub speaks its API), name the demo repos,
    pin their revisions (:func:`demo_revision`), choose the CPU profile with the demo's sizes
    and learning settings, and point every hub endpoint at the local server, so region probes
    stay on this machine too.  The URL changes with each call (port 0).  The server stops when
    the block ends.
    """
    from bootstrap.demo.hub import LocalHub

    root = build_demo_assets(demo_assets_dir(workspace))
    model_sha = demo_revision("model", DEMO_MODEL)
    dataset_sha = demo_revision("dataset", DEMO_DATASET)
    with LocalHub() as hub:
        hub.add_repo(DEMO_MODEL, root / "model", repo_type="model", sha=model_sha)
        hub.add_repo(DEMO_DATASET, root / "dataset", repo_type="dataset", sha=dataset_sha)
        yield {
            "hf_endpoint": hub.url,
            "hf_mirror_endpoint": hub.url,
            "modelscope_endpoint": hub.url,
            "mirror": "huggingface",
            "region": "global",
            "offline": False,
            "model": DEMO_MODEL,
            "model_revision": model_sha,
            "modelscope_model": DEMO_MODEL,
            "dataset": DEMO_DATASET,
            "dataset_revision": dataset_sha,
            "modelscope_dataset": DEMO_DATASET,
            "dataset_config": "main",
            "profile": "cpu-smoke",
            **DEMO_SIZES,
            **DEMO_TRAINING,
        }
