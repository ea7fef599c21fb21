"""The llama.cpp calls of the GGUF export, run in a child process.

llama.cpp aborts the whole process on some errors (an unknown vocabulary, a malformed file);
running it here keeps such an abort from taking the exporter with it, and keeps its chatty
C-level logging out of the user's terminal (the parent logs it at debug level).

    python -m bootstrap.export.llama_worker convert SCRIPT PRE_TOKENIZER CONVERTER_ARGS...
    python -m bootstrap.export.llama_worker quantize IN OUT TYPE
    python -m bootstrap.export.llama_worker verify GGUF PROBE_JSON

`convert` runs llama.cpp's convert_hf_to_gguf.py as its own `__main__`; llama.cpp knows a BPE
pre-tokenizer only by a hash of the ids it gives on a test text, so a tokenizer trained anew
(the demo's) is unknown even when its pre-tokenizer is exactly Qwen2's.  PRE_TOKENIZER names
the llama.cpp pre-tokenizer to use when, and only when, the hash is unknown ("-" for none);
the exporter passes one only after checking the pre-tokenizer definition, and `verify` then
proves llama.cpp tokenizes like the HF tokenizer.

`verify` reads {"text": str, "token_ids": [int]} -- a probe text and the ids the HF tokenizer
gives it -- loads the model, tokenizes the text with llama.cpp, evaluates it and prints one JSON
line: {"tokens_match": bool, "llama_token_ids": [...], "n_vocab": int, "finite_logits": bool}.
"""

from __future__ import annotations

import ctypes
import json
import math
import sys

# llama.cpp's file types for the quantisations we offer (LLAMA_FTYPE_MOSTLY_*).
FTYPES = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
}


def convert(script: str, pre_tokenizer: str, *converter_args: str) -> None:
    import runpy
    from pathlib import Path

    sys.path.insert(0, str(Path(script).parent))
    sys.argv = [script, *converter_args]
    if pre_tokenizer != "-":
        from conversion.base import TextModel  # the converter's own package, beside the script

        recognised = TextModel.get_vocab_base_pre

        def with_fallback(self, tokenizer):  # the converter's own signature
            try:
                return recognised(self, tokenizer)
            except NotImplementedError:
                return pre_tokenizer

        TextModel.get_vocab_base_pre = with_fallback
    runpy.run_path(script, run_name="__main__")


def quantize(source: str, dest: str, kind: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[kind])
    status = llama_cpp.llama_model_quantize(source.encode(), dest.encode(), ctypes.byref(params))
    if status != 0:
        raise SystemExit(f"llama_model_quantize returned {status}")


def verify(path: str, probe_file: str) -> None:
    import llama_cpp

    with open(probe_file, encoding="utf-8") as handle:
        probe = json.load(handle)
    expected = [int(t) for t in probe["token_ids"]]
    llm = llama_cpp.Llama(model_path=path, n_ctx=max(64, len(expected) + 8), verbose=False)
    ids = llm.tokenize(probe["text"].encode("utf-8"), add_bos=False, special=True)
    llm.eval(expected)
    last = llm.scores[llm.n_tokens - 1]
    print(
        json.dumps(
            {
                "tokens_match": ids == expected,
                "llama_token_ids": ids,
                "n_vocab": llm.n_vocab(),
                "finite_logits": all(math.isfinite(float(x)) for x in last),
            }
        )
    )


def main(argv: list[str]) -> None:
    command, *args = argv
    {"convert": convert, "quantize": quantize, "verify": verify}[command](*args)


if __name__ == "__main__":
    main(sys.argv[1:])
