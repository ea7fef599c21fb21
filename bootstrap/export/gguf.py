"""`gguf-f16`, `gguf-q8_0`, `gguf-q4_k_m`, `gguf-q5_k_m`: llama.cpp files, made with no network.

Tools, both from one pinned llama-cpp-python release (scripts/install-gguf-tools.sh installs
them at install time, never at export time):
- the converter: llama.cpp's `convert_hf_to_gguf.py` with its `conversion/` package and its own
  `gguf-py` writer, extracted from that release's sdist into
  ``<sys.prefix>/share/grpo-bootstrap/llama.cpp-<version>``;
- the quantiser and the loader: libllama as built by `pip install llama-cpp-python`, called
  through its `llama_model_quantize` binding and `llama_cpp.Llama`.

The merged 16-bit model is converted once to f16 and every quantisation is made from that file,
as llama.cpp's own workflow does.  Each file is then loaded back by llama.cpp, its tokenizer is
checked against the HF tokenizer on a chat-formatted probe, and one forward pass must give
finite logits; a file that fails is not kept.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bootstrap.errors import EnvironmentUnfit, ExportFailed
from bootstrap.launch.environment import child_environment
from bootstrap.launch.signals import terminated_with_parent
from bootstrap.task.prompts import build_prompt
from bootstrap.workspace import atomic_file

log = logging.getLogger(__name__)

QUANT_TYPES = ("f16", "q8_0", "q4_k_m", "q5_k_m")
INSTALL_HINT = (
    "run scripts/install-gguf-tools.sh (it builds llama-cpp-python and unpacks its converter)"
)
_PROBE_QUESTION = "Natalia sold 48 clips in April and half as many in May. How many in total?"
_LOG_TAIL = 3000


def gguf_filename(model_id: str, kind: str) -> str:
    """'Qwen/Qwen2.5-3B-Instruct', 'q4_k_m' -> 'Qwen2.5-3B-Instruct-GRPO-Q4_K_M.gguf'."""
    return f"{model_id.rsplit('/', 1)[-1]}-GRPO-{kind.upper()}.gguf"


def llama_cpp_version() -> str | None:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return None


def converter_dir(version: str) -> Path:
    """Where scripts/install-gguf-tools.sh unpacks the converter of llama-cpp-python `version`."""
    return Path(sys.prefix) / "share" / "grpo-bootstrap" / f"llama.cpp-{version}"


def require_tools() -> Path:
    """The converter script matching the installed llama-cpp-python, or EnvironmentUnfit."""
    version = llama_cpp_version()
    if version is None:
        raise EnvironmentUnfit(
            "GGUF export needs llama-cpp-python, which is not installed", hint=INSTALL_HINT
        )
    script = converter_dir(version) / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise EnvironmentUnfit(
            f"llama.cpp's converter for llama-cpp-python {version} is not installed "
            f"({script} is missing)",
            hint=INSTALL_HINT,
        )
    return script


def _run(command: list[str], what: str) -> str:
    """Run a tool; its output goes to the debug log, and its tail into the error if it fails."""
    log.debug("running %s", " ".join(command))
    # The worker is a module of this package (child_environment makes it importable wherever
    # the exporter runs from); NO_LOCAL_GGUF would keep the converter from its own gguf-py.
    env = {k: v for k, v in child_environment().items() if k != "NO_LOCAL_GGUF"}
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, check=False,
        preexec_fn=terminated_with_parent(),  # a killed export does not leave it converting
    )  # fmt: skip
    log.debug("%s output:\n%s%s", what, result.stdout, result.stderr)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-_LOG_TAIL:]
        raise ExportFailed(
            f"{what} failed (exit {result.returncode}):\n{tail}",
            hint="run with -vv for the full log; the merged model in exports/ is unaffected",
        )
    return result.stdout


def _worker(*args: str) -> list[str]:
    return [sys.executable, "-m", "bootstrap.export.llama_worker", *args]


def pre_tokenizer_fallback(model_dir: Path) -> str:
    """ "qwen2" when the model's tokenizer splits text exactly as Qwen2's does, else "-".

    llama.cpp recognises pre-tokenizers by a hash of a vocabulary's ids, so a vocabulary
    trained anew with Qwen2's pre-tokenizer (the demo model's) needs to be named explicitly.
    """
    try:
        from transformers import Qwen2Tokenizer

        ours = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
        qwen2 = json.loads(Qwen2Tokenizer().backend_tokenizer.to_str())
    except (OSError, ValueError, ImportError):
        return "-"
    same = all(ours.get(key) == qwen2.get(key) for key in ("normalizer", "pre_tokenizer"))
    return "qwen2" if same else "-"


def convert_f16(merged: Path, dest: Path) -> Path:
    """Convert the HF model directory `merged` to an f16 GGUF at `dest`."""
    script = require_tools()
    _run(
        _worker(
            "convert",
            str(script),
            pre_tokenizer_fallback(merged),
            str(merged),
            "--outfile",
            str(dest),
            "--outtype",
            "f16",
        ),
        f"convert_hf_to_gguf.py on {merged}",
    )
    return dest


def quantize(f16: Path, dest: Path, kind: str) -> Path:
    """Quantise the f16 GGUF to `kind` (q8_0, q4_k_m, q5_k_m) at `dest`."""
    _run(_worker("quantize", str(f16), str(dest), kind), f"llama.cpp quantisation to {kind}")
    return dest


def build_verified(
    dest: Path, produce: Callable[[Path], object], tokenizer_dir: Path, system_prompt: str
) -> dict[str, int | bool]:
    """Run `produce(tmp)`, verify the file with llama.cpp, then rename it to `dest`.

    A file that fails verification never appears under `dest`.  Returns the verification findings.
    """
    with atomic_file(dest) as tmp:
        produce(tmp)
        return verify(tmp, tokenizer_dir, system_prompt)


def verify(path: Path, tokenizer_dir: Path, system_prompt: str) -> dict[str, int | bool]:
    """Load `path` with llama.cpp and check it against the HF tokenizer; returns the findings.

    Raises BootstrapError when llama.cpp cannot load it, tokenizes the chat-formatted probe
    differently from the HF tokenizer, or computes non-finite logits.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    text = tokenizer.apply_chat_template(
        build_prompt(_PROBE_QUESTION, system_prompt), tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.json"
        probe.write_text(json.dumps({"text": text, "token_ids": ids}), encoding="utf-8")
        out = _run(_worker("verify", str(path), str(probe)), f"loading {path.name} with llama.cpp")
    findings = json.loads(out.strip().splitlines()[-1])
    if not findings["tokens_match"]:
        raise ExportFailed(
            f"{path.name}: llama.cpp tokenizes the chat prompt differently from the HF tokenizer "
            f"(llama.cpp {findings['llama_token_ids'][:16]}..., HF {ids[:16]}...)",
            hint="the converter did not recognise this tokenizer's pre-tokenizer; "
            "check the llama-cpp-python pin supports the model",
        )
    if not findings["finite_logits"]:
        raise ExportFailed(f"{path.name}: llama.cpp computed non-finite logits")
    return {"llama_cpp_loaded": True, "n_vocab": findings["n_vocab"], "probe_tokens": len(ids)}
