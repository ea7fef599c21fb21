"""`grpo-bootstrap fetch` against the best plain downloaders, on the same files, in one run.

Two loopback Hugging Face-API hubs (the package's LocalHub) serve one model (safetensors shards
plus config and tokenizer files) and a small GSM8K-shaped dataset:

- capped: every connection is held to `--cap-mib` MiB/s, as public mirrors do; the peer is
  `aria2c -x8 -s8` (what hfd.sh runs), the target fetch >= 0.8x its throughput;
- uncapped: the peer is `curl --parallel` (one connection per file, all files at once), the
  target fetch >= 0.8x.  curl leaves the bytes in the page cache, while aria2c (so fetch)
  fsyncs each file it completes; where the disk is slower than loopback, that is most of the
  gap, so `curl --parallel` followed by `sync -f` (the bytes on disk) is printed beside it.

Each round runs every contender once on a fresh directory, fetch as a user does (the CLI in a
new process: start-up, region detection with the hubs, describe, download, verify, move, the
dataset's parquet written).  Throughput = the files' bytes / wall seconds; printed per contender
(median over the rounds), the ratio fetch / peer, and where fetch's time went (the manifest's
phases of the model, and the start-up: wall time less the slower artefact's own seconds).

    python benchmarks/fetch_speed.py                      # 2 x 384 MiB shards, 3 rounds
    python benchmarks/fetch_speed.py --shards-mib 3786,2098 --only capped   # Qwen2.5-3B's shards

Everything talks to 127.0.0.1 only: the hubs, and every other endpoint fetch knows is pointed
at a closed loopback port.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bootstrap.config import EndpointsConfig
from bootstrap.demo.assets import write_gsm8k
from bootstrap.demo.hub import LocalHub
from bootstrap.demo.server import BodyFilter, Exchange

MODEL = "bench/two-shard-model"
DATASET = "bench/gsm8k-mini"


class CappedHub(LocalHub):
    """LocalHub whose every response body goes out at most `cap` bytes/s (0: no cap).

    One HTTP/1.1 connection sends one response at a time, so a cap per response is a cap per
    connection, as a mirror's traffic shaping applies it.
    """

    def __init__(self, cap_bytes_s: float) -> None:
        super().__init__()
        self.cap = cap_bytes_s

    def serve(self, exchange: Exchange) -> None:
        response = self.dispatch(exchange.request)
        exchange.send(response, self._paced() if self.cap else None)

    def _paced(self) -> BodyFilter:
        def body(chunks: Iterator[bytes], length: int) -> Iterator[bytes]:
            started, sent = time.monotonic(), 0
            for chunk in chunks:
                yield chunk
                sent += len(chunk)
                ahead = sent / self.cap - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)

        return body


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def build_repos(root: Path, shards_mib: list[int]) -> tuple[Path, Path]:
    model, dataset = root / "model", root / "dataset"
    model.mkdir(parents=True)
    for i, mib in enumerate(shards_mib, 1):
        with (model / f"model-{i:05d}-of-{len(shards_mib):05d}.safetensors").open("wb") as out:
            for _ in range(mib):
                out.write(os.urandom(2**20))
    (model / "model.safetensors.index.json").write_text('{"metadata": {}, "weight_map": {}}')
    (model / "config.json").write_text('{"model_type": "qwen2"}')
    (model / "tokenizer.json").write_bytes(os.urandom(7 * 2**20))  # Qwen's is 7 MB
    (model / "tokenizer_config.json").write_text("{}")
    write_gsm8k(dataset)
    return model, dataset


def file_urls(hub: LocalHub) -> list[tuple[str, int]]:
    """(resolve URL, size) of every file fetch downloads, dataset included."""
    urls = []
    for (repo_type, repo_id), repo in hub.repos.items():
        prefix = "" if repo_type == "model" else "datasets/"
        for f in repo.files.values():
            if repo_type == "dataset" and not f.path.endswith(".parquet"):
                continue
            urls.append((f"{hub.url}/{prefix}{repo_id}/resolve/{repo.sha}/{f.path}", f.size))
    return urls


def run_aria2c(urls: list[tuple[str, int]], out: Path) -> float:
    listing = "".join(f"{url}\n  out={i}.bin\n" for i, (url, _) in enumerate(urls))
    started = time.monotonic()
    subprocess.run(
        ["aria2c", "--no-conf=true", "-x8", "-s8", "-k1M", "-j5", "--file-allocation=none",
         "-q", "-d", str(out), "-i", "-"],
        input=listing.encode(), check=True,
    )  # fmt: skip
    return time.monotonic() - started


def run_curl(urls: list[tuple[str, int]], out: Path) -> float:
    out.mkdir(parents=True)
    args = ["curl", "--parallel", "--parallel-max", str(len(urls)), "--no-progress-meter", "--fail"]
    for i, (url, _) in enumerate(urls):
        args += ["-o", str(out / f"{i}.bin"), url]
    started = time.monotonic()
    subprocess.run(args, check=True)
    return time.monotonic() - started


def run_curl_synced(urls: list[tuple[str, int]], out: Path) -> float:
    started = time.monotonic()
    run_curl(urls, out)
    subprocess.run(["sync", "-f", str(out)], check=True)
    return time.monotonic() - started


def run_fetch(hub: LocalHub, workspace: Path, home: Path, downloader: str) -> tuple[float, dict]:
    dead = closed_port_url()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRPO_BOOTSTRAP_", "HF_"))}
    env |= {f"GRPO_BOOTSTRAP_{name.upper()}": dead for name in EndpointsConfig.model_fields}
    env |= {
        "GRPO_BOOTSTRAP_HF_ENDPOINT": hub.url,
        "GRPO_BOOTSTRAP_MODEL": MODEL,
        "GRPO_BOOTSTRAP_DATASET": DATASET,
        "GRPO_BOOTSTRAP_FETCH_DOWNLOADER": downloader,
        "HF_HOME": str(home / "hf"),
        "MODELSCOPE_CACHE": str(home / "ms"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    args = [
        sys.executable, "-m", "bootstrap", "--json", "-q", "--workspace", str(workspace),
        "fetch", "--region", "global", "--mirror", "huggingface",
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"fetch failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shards-mib",
        type=lambda text: [int(mib) for mib in text.split(",")],
        default=[384, 384],
        help="the model's shard sizes, comma-separated (Qwen2.5-3B-Instruct's: 3786,2098)",
    )
    parser.add_argument("--cap-mib", type=float, default=20.0, help="per-connection cap, MiB/s")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("capped", "uncapped"), help="run one of the two cases")
    parser.add_argument("--downloader", default="auto", help="fetch_downloader for fetch")
    args = parser.parse_args()
    for tool in ("aria2c", "curl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install aria2 curl)")

    root = Path(tempfile.mkdtemp(prefix="fetch-speed."))
    try:
        model_dir, dataset_dir = build_repos(root / "repos", args.shards_mib)
        with CappedHub(args.cap_mib * 2**20) as capped, CappedHub(0) as uncapped:
            for hub in (capped, uncapped):
                hub.add_repo(MODEL, model_dir)
                hub.add_repo(DATASET, dataset_dir, repo_type="dataset")
            total = sum(size for _, size in file_urls(capped))
            cases = [
                ("capped", f"{args.cap_mib:g} MiB/s per connection", capped,
                 {"aria2c -x8 -s8": run_aria2c}),
                ("uncapped", "no cap", uncapped,
                 {"curl --parallel": run_curl, "curl + sync": run_curl_synced}),
            ]  # fmt: skip
            shards = " + ".join(f"{mib} MiB" for mib in args.shards_mib)
            print(f"files: {total / 2**20:.0f} MiB (shards of {shards}, tokenizer, config, "
                  f"dataset parquet); {args.rounds} rounds; medians")  # fmt: skip
            for name, cap, hub, peers in cases:
                if args.only not in (None, name):
                    continue
                peer_s: dict[str, list[float]] = {peer: [] for peer in peers}
                fetch_s, phases = [], []
                for r in range(args.rounds):
                    work = root / f"{name}-{r}"
                    for peer_name, peer in peers.items():
                        peer_s[peer_name].append(peer(file_urls(hub), work / "peer"))
                        shutil.rmtree(work / "peer")
                    wall, manifest = run_fetch(hub, work / "ws", work / "home", args.downloader)
                    fetch_s.append(wall)
                    slower = max(manifest["model"]["seconds"], manifest["dataset"]["seconds"])
                    phases.append({**manifest["model"]["phases"], "start-up": wall - slower})
                    shutil.rmtree(work)
                fetch_t = statistics.median(fetch_s)
                downloader = manifest["model"]["downloader"]
                print(f"\n{name} ({cap}):")
                for peer_name, seconds in peer_s.items():
                    peer_t = statistics.median(seconds)
                    print(
                        f"  {peer_name:<16} {total / 2**20 / peer_t:8.1f} MiB/s  ({peer_t:.2f} s)"
                    )
                print(f"  {'fetch':<16} {total / 2**20 / fetch_t:8.1f} MiB/s  ({fetch_t:.2f} s, "
                      f"through {downloader})")  # fmt: skip
                for peer_name, seconds in peer_s.items():
                    ratio = statistics.median(seconds) / fetch_t
                    print(f"  ratio fetch / {peer_name}: {ratio:.2f}x (target >= 0.8x)")
                spent = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
                print("  fetch's time: " + ", ".join(f"{k} {v:.2f} s" for k, v in spent.items()))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
