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
# Measured on 2 CPU cores with the tiny model: a GRPO step takes 0.2-1.3 s, so 60 steps keep
# training near a minute, and short answers keep both evaluations and the sample quick.
DEMO_SIZES: dict[str, int] = {
    "max_steps": 60,
    "save_steps": 20,
    "eval_max_new_tokens": 64,
    "sample_max_tokens": 64,
}
# Part of the assets' directory name: bump it when what the builders write changes, so a
# workspace built by an older version gets fresh assets instead of stale ones.
ASSETS_VERSION = "1"


def demo_assets_dir(workspace: Workspace) -> Path:
    """Where the demo's generated repositories live inside the workspace."""
    return workspace.root / "demo-assets" / f"v{ASSETS_VERSION}-seed{DEMO_SEED}"


def build_demo_assets(root: Path) -> Path:
    """The model (``root/model``) and dataset (``root/dataset``) repos, built once, atomically."""
    from bootstrap.demo.assets import build_atomically, build_tiny_qwen2, write_gsm8k

    def build(tmp: Path) -> None:
        build_tiny_qwen2(tmp / "model", seed=DEMO_SEED)
        write_gsm8k(tmp / "dataset", DEMO_TRAIN_ROWS, DEMO_TEST_ROWS, seed=DEMO_SEED)

    return build_atomically(root, build)


@contextmanager
def demo_hub(workspace: Workspace) -> Iterator[dict[str, Any]]:
    """Serve the demo's model and dataset on loopback; yield the config flags that use them.

    The flags force the Hugging Face mirror (the local hub speaks its API), name the demo repos,
    choose the CPU profile and the demo's sizes, and point every hub endpoint at the local
    server, so region probes stay on this machine too.  The URL changes with each call (port
    0).  The server stops when the block ends.
    """
    from bootstrap.demo.hub import LocalHub

    root = build_demo_assets(demo_assets_dir(workspace))
    with LocalHub() as hub:
        hub.add_repo(DEMO_MODEL, root / "model", repo_type="model")
        hub.add_repo(DEMO_DATASET, root / "dataset", repo_type="dataset")
        yield {
            "hf_endpoint": hub.url,
            "hf_mirror_endpoint": hub.url,
            "modelscope_endpoint": hub.url,
            "mirror": "huggingface",
            "region": "global",
            "offline": False,
            "model": DEMO_MODEL,
            "modelscope_model": DEMO_MODEL,
            "dataset": DEMO_DATASET,
            "modelscope_dataset": DEMO_DATASET,
            "dataset_config": "main",
            "profile": "cpu-smoke",
            **DEMO_SIZES,
        }
