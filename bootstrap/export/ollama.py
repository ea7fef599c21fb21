"""`ollama`: a Modelfile beside the chosen GGUF, so `ollama create NAME -f Modelfile` just works.

The Modelfile carries the recipe's system prompt (the model was trained to answer in that XML
layout), the chat template written as an Ollama Go template, the stop tokens and the recipe's
sampling settings.  Ollama resolves `FROM ./file.gguf` against the Modelfile's directory, so
the Modelfile lives in exports/gguf/ next to the file it names.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from bootstrap.errors import ConfigError
from bootstrap.workspace import atomic_file

log = logging.getLogger(__name__)

# Preference order for the GGUF the Modelfile points at: small and good first.
GGUF_PREFERENCE = ("gguf-q4_k_m", "gguf-q5_k_m", "gguf-q8_0", "gguf-f16")

# ChatML (Qwen2.5, SmolLM2, ...) as an Ollama template: Ollama collects system messages (and the
# Modelfile's SYSTEM) into .System, so the loop skips them; the prompt ends where the assistant's
# turn begins, exactly as the HF template's add_generation_prompt does.
CHATML_TEMPLATE = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    '{{- range .Messages }}{{- if ne .Role "system" }}'
    "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "{{- end }}<|im_start|>assistant\n"
)
CHATML_STOPS = ("<|im_end|>", "<|im_start|>")


def chat_template_of(tokenizer_dir: Path) -> str:
    """The HF chat template (chat_template.jinja, or tokenizer_config.json's field), or ''."""
    jinja = tokenizer_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = tokenizer_dir / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        return template if isinstance(template, str) else ""
    return ""


def _eos_token(tokenizer_dir: Path) -> str | None:
    config = tokenizer_dir / "tokenizer_config.json"
    if not config.is_file():
        return None
    eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token")
    return eos.get("content") if isinstance(eos, dict) else eos


def _quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise ConfigError(f'the {what} contains """, which a Modelfile cannot quote')
    return f'"""{text}"""'


def modelfile_text(
    gguf_name: str,
    tokenizer_dir: Path,
    system_prompt: str,
    *,
    temperature: float,
    top_p: float,
) -> str:
    """The Modelfile for `gguf_name` (a file in the same directory)."""
    lines = [f"FROM ./{gguf_name}", ""]
    if "<|im_start|>" in chat_template_of(tokenizer_dir):
        lines.append(f"TEMPLATE {_quoted(CHATML_TEMPLATE, 'chat template')}")
        stops = list(CHATML_STOPS)
    else:
        # Ollama falls back to the template embedded in the GGUF (tokenizer.chat_template).
        log.warning(
            "no Ollama template for this model's chat format; Ollama will use the GGUF's own"
        )
        stops = []
    eos = _eos_token(tokenizer_dir)
    if eos and eos not in stops:
        stops.append(eos)
    lines += [f"SYSTEM {_quoted(system_prompt, 'system prompt')}", ""]
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in stops]
    lines += [f"PARAMETER temperature {temperature:g}", f"PARAMETER top_p {top_p:g}"]
    return "\n".join(lines) + "\n"


def write_modelfile(dest: Path, text: str) -> Path:
    with atomic_file(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return dest
