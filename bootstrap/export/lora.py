"""`lora`: the trained adapter as people share it -- adapter weights, adapter config, tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bootstrap.errors import ConfigError
from bootstrap.workspace import ADAPTER_FILES, TOKENIZER_FILES, atomic_dir


def export_lora(adapter: Path, base: Path, base_model_id: str, dest: Path) -> Path:
    """Write `dest` with the adapter files and the tokenizer; returns `dest`.

    The tokenizer comes from the adapter directory when training saved one there (it may have
    set a pad token), else from the base model.  `base_model_name_or_path` in the copied
    adapter_config.json is set to the hub id, because the training run recorded a local path
    that means nothing on another machine.
    """
    tokenizer_source = adapter if (adapter / "tokenizer_config.json").is_file() else base
    tokenizer_files = [n for n in TOKENIZER_FILES if (tokenizer_source / n).is_file()]
    if "tokenizer_config.json" not in tokenizer_files:
        raise ConfigError(
            f"no tokenizer in {adapter} or {base}", hint="run `grpo-bootstrap fetch` again"
        )
    with atomic_dir(dest) as tmp:
        for name in ADAPTER_FILES:
            shutil.copy2(adapter / name, tmp / name)
        for name in tokenizer_files:
            shutil.copy2(tokenizer_source / name, tmp / name)
        config_path = tmp / "adapter_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = base_model_id
        config_path.write_text(
            json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
    return dest
