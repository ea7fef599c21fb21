"""The job configuration: one typed object, assembled from four layers.

Precedence, lowest first: defaults < YAML file (``--config``) < environment ``GRPO_BOOTSTRAP_*``
< command-line flags.  Every field has one globally unique name, which is at once its YAML key
(inside its section, or at the top level), its environment variable ``GRPO_BOOTSTRAP_<NAME>``
and, for the fields that have one, its flag ``--<name>``.  Unknown keys and bad values are
rejected with the key, the value, where it came from and what is allowed.

Fields left ``None`` in the training section are filled in by the hardware profile when the
plan is built; a value given here always wins over the profile.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bootstrap import constants as C
from bootstrap.errors import ConfigError

RegionRequest = Literal["auto", "cn", "global"]
BUILTIN_MIRRORS = ("huggingface", "hf-mirror", "modelscope")
BackendRequest = Literal["auto", "unsloth", "trl"]
Toggle = Literal["auto", "on", "off"]
Distributed = Literal["ddp", "zero2", "zero3"]
ExportFormat = Literal[
    "lora",
    "merged16",
    "merged4",
    "gguf-f16",
    "gguf-q8_0",
    "gguf-q4_k_m",
    "gguf-q5_k_m",
    "ollama",
]
EXPORT_FORMATS: tuple[str, ...] = ExportFormat.__args__  # type: ignore[attr-defined]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EndpointsConfig(_Section):
    """Every endpoint the program talks to; a company proxy of the HF API is a mirror too."""

    hf_endpoint: str = C.DEFAULT_HF_ENDPOINT
    hf_mirror_endpoint: str = C.DEFAULT_HF_MIRROR_ENDPOINT
    modelscope_endpoint: str = C.DEFAULT_MODELSCOPE_ENDPOINT
    tencent_metadata_url: str = C.DEFAULT_TENCENT_METADATA_URL
    alibaba_metadata_url: str = C.DEFAULT_ALIBABA_METADATA_URL
    huawei_metadata_url: str = C.DEFAULT_HUAWEI_METADATA_URL
    aws_metadata_url: str = C.DEFAULT_AWS_METADATA_URL
    gcp_metadata_url: str = C.DEFAULT_GCP_METADATA_URL
    azure_metadata_url: str = C.DEFAULT_AZURE_METADATA_URL

    @field_validator("*")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")


class TrainConfig(_Section):
    """The GRPO recipe of Unsloth's "Qwen2.5 (3B) GRPO" notebook; None = from the profile."""

    dtype: Literal["bf16", "fp16", "fp32"] | None = None
    max_seq_length: int | None = Field(None, ge=64)
    load_in_4bit: bool | None = None
    lora_rank: int | None = Field(None, ge=1, le=512)
    lora_alpha: int | None = Field(None, ge=1, description="defaults to lora_rank, as the recipe")
    lora_target_modules: list[str] = [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    ]  # fmt: skip
    gradient_checkpointing: Literal["unsloth", "true", "false"] = "unsloth"
    seed: int = 3407
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=0.95, description="vLLM's share of the GPU memory this job may use"
    )
    gpu_memory_limit_gib: float | None = Field(
        None, gt=0, description="cap on this job's GPU memory, e.g. 15 to rehearse a 16 GB card"
    )
    learning_rate: float = Field(5e-6, gt=0, lt=1)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.99, ge=0, lt=1)
    weight_decay: float = Field(0.1, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    lr_scheduler_type: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    optim: str = Field("paged_adamw_8bit", description="torch optimiser on machines without bitsandbytes")
    logging_steps: int = Field(1, ge=1)
    per_device_train_batch_size: int | None = Field(None, ge=1)
    gradient_accumulation_steps: int | None = Field(None, ge=1)
    num_generations: int | None = Field(None, ge=2)
    max_prompt_length: int | None = Field(None, ge=16)
    max_completion_length: int | None = Field(None, ge=8)
    max_steps: int = Field(250, ge=1)
    save_steps: int = Field(250, ge=1, description="checkpoint interval; SIGTERM also saves")
    max_grad_norm: float = Field(0.1, gt=0)
    vllm: Toggle = Field("auto", description="vLLM fast generation in the unsloth backend")
    system_prompt: str | None = Field(None, description="None = the recipe's XML format prompt")
    one_shot: bool = Field(False, description="show one worked example first (for small models)")
    sample_question: str = "How many r's are in strawberry?"
    sample_temperature: float = Field(0.8, ge=0)
    sample_top_p: float = Field(0.95, gt=0, le=1)
    sample_max_tokens: int = Field(1024, ge=1)
    # Several GPUs / machines (bootstrap/train/launch.py): these say where the job runs, not
    # what a step computes, except that more processes mean a larger global batch.
    gpus: int | Literal["auto"] = Field(
        1, description="GPUs per machine (training processes); auto = every visible GPU"
    )
    distributed: Distributed = Field("ddp", description="ddp, or DeepSpeed ZeRO stage 2 / 3")
    vllm_server: bool = Field(False, description="TRL's vLLM server on one GPU, training on the rest")
    num_machines: int = Field(1, ge=1)
    machine_rank: int = Field(0, ge=0)
    main_process_ip: str | None = Field(None, description="rank 0's address; needed with num_machines > 1")
    main_process_port: int = Field(29500, ge=1, le=65535)

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpu_count(cls, value: Any) -> Any:
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        if not text.isdigit() or int(text) < 1:  # one message rather than one per union member
            raise ValueError("expected a positive number of GPUs or auto")
        return int(text)


class EvalConfig(_Section):
    eval_limit: int | None = Field(None, ge=1, description="GSM8K test rows; None = all 1319")
    eval_batch_size: int = Field(32, ge=1)
    eval_max_new_tokens: int = Field(512, ge=8)
    skip_base_eval: bool = False


class ExportConfig(_Section):
    export_formats: list[ExportFormat] = ["lora", "merged16", "gguf-q4_k_m", "ollama"]
    push: list[str] = Field([], description="hf:OWNER/NAME and/or modelscope:OWNER/NAME")

    @field_validator("push")
    @classmethod
    def _push_targets(cls, targets: list[str]) -> list[str]:
        for target in targets:
            hub, _, repo = target.partition(":")
            if hub not in ("hf", "modelscope") or repo.count("/") != 1:
                raise ValueError(f"{target!r}: expected hf:OWNER/NAME or modelscope:OWNER/NAME")
        return targets


class JobConfig(_Section):
    """Everything one job needs to know; `plan --json` prints it resolved."""

    workspace: Path = Path(C.DEFAULT_WORKSPACE)
    model: str = "Qwen/Qwen2.5-3B-Instruct"
    model_revision: str | None = Field(None, description="None = the catalog's pinned revision")
    modelscope_model: str | None = Field(None, description="ModelScope id where it differs")
    dataset: str = "openai/gsm8k"
    dataset_config: str = "main"
    dataset_revision: str | None = None
    modelscope_dataset: str | None = None
    region: RegionRequest = "auto"
    mirror: str = Field("auto", description="auto, huggingface, hf-mirror, modelscope or an extra mirror's name")
    extra_mirrors: list[str] = Field([], description="NAME=URL of more HF-API mirrors (a company proxy), tried first")
    offline: bool = False
    profile: str | None = Field(None, description="None = chosen from the GPU")
    backend: BackendRequest = "auto"
    detect_timeout_s: float = Field(1.5, gt=0, le=30)
    fetch_attempts: int = Field(5, ge=1, le=50, description="tries per mirror before the next")
    fetch_max_seconds: float = Field(3600, gt=0, description="time per mirror before the next")
    fetch_backoff_s: float = Field(1.0, ge=0, description="first retry wait; doubles, with jitter")
    fetch_max_wait_s: float = Field(60, ge=0, description="cap on one wait, Retry-After included")
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    export: ExportConfig = ExportConfig()
    endpoints: EndpointsConfig = EndpointsConfig()

    @field_validator("extra_mirrors")
    @classmethod
    def _extra_mirrors(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            name, _, url = entry.partition("=")
            if not name or name in BUILTIN_MIRRORS or not url.startswith(("http://", "https://")):
                raise ValueError(f"{entry!r}: expected NAME=http(s)://URL with a new NAME")
        return entries

    @model_validator(mode="after")
    def _known_mirror(self) -> JobConfig:
        allowed = ("auto", *BUILTIN_MIRRORS, *(e.partition("=")[0] for e in self.extra_mirrors))
        if self.mirror not in allowed:
            raise ValueError(f"mirror {self.mirror!r} is not one of {', '.join(allowed)}")
        return self

    @model_validator(mode="after")
    def _machines(self) -> JobConfig:
        t = self.train
        if t.machine_rank >= t.num_machines:
            raise ValueError(f"machine_rank {t.machine_rank} must be below num_machines {t.num_machines}")
        if t.num_machines > 1 and not t.main_process_ip:
            raise ValueError("num_machines > 1 needs main_process_ip (the address of machine 0)")
        return self


SECTIONS: dict[str, type[_Section]] = {
    "train": TrainConfig,
    "eval": EvalConfig,
    "export": ExportConfig,
    "endpoints": EndpointsConfig,
}


def _field_index() -> dict[str, str | None]:
    """Field name -> section name (None for top-level fields).  Names are globally unique."""
    index: dict[str, str | None] = {
        name: None for name in JobConfig.model_fields if name not in SECTIONS
    }
    for section, model in SECTIONS.items():
        for name in model.model_fields:
            if name in index:  # a duplicate would make env/flag names ambiguous
                raise AssertionError(f"config field {name!r} is defined twice")
            index[name] = section
    return index


FIELDS: dict[str, str | None] = _field_index()
_LIST_FIELDS = {"lora_target_modules", "export_formats", "push", "extra_mirrors"}


def env_var(name: str) -> str:
    """The environment variable that sets config field `name`."""
    return f"{C.ENV_PREFIX}{name.upper()}"


def _dotted(name: str) -> str:
    section = FIELDS[name]
    return f"{section}.{name}" if section else name


def _unknown(key: str, origin: str) -> ConfigError:
    close = difflib.get_close_matches(key, FIELDS, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "run `grpo-bootstrap plan --json` to see every key"
    return ConfigError(f"unknown config key {key!r} ({origin})", hint=hint)


def _flatten_yaml(data: Any, path: Path) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key)
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: section {key!r} must be a mapping, got {value!r}")
            for sub, sub_value in value.items():
                if FIELDS.get(str(sub), "-") != key:
                    raise _unknown(f"{key}.{sub}", f"in {path}")
                flat[str(sub)] = sub_value
        elif key in FIELDS:
            flat[key] = value
        else:
            raise _unknown(key, f"in {path}")
    return flat


def read_yaml(path: Path) -> dict[str, Any]:
    """Flat {field: value} from a YAML config file; nested sections and flat keys both work."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return _flatten_yaml(data, Path(path))


def read_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Flat {field: value} from GRPO_BOOTSTRAP_* and the standard hub variables."""
    values: dict[str, Any] = {}
    if C.hf_endpoint(environ):
        values["hf_endpoint"] = C.hf_endpoint(environ)
    if C.hf_offline(environ):
        values["offline"] = True
    for name, raw in C.prefixed_env(environ).items():
        if name in C.NON_CONFIG_ENV:
            continue
        if name not in FIELDS:  # a typo in a variable name must not be silently ignored
            raise _unknown(name, f"environment variable {env_var(name)}")
        values[name] = parse_text(name, raw)
    return values


def parse_text(name: str, raw: str) -> Any:
    """A value typed as text (env var, ``--set``): lists are comma-separated, the rest is
    left to the field's validator ("5e-6" -> float, "true" -> bool, "" -> None)."""
    if name in _LIST_FIELDS:
        return [v.strip() for v in raw.split(",") if v.strip()]
    return None if raw.strip() == "" else raw


class ResolvedConfig(BaseModel):
    """The config plus, for every value that is not a default, the layer that set it."""

    config: JobConfig
    sources: dict[str, str]


def load_config(
    config_file: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> ResolvedConfig:
    """Merge defaults < YAML < env < flags into a validated JobConfig.

    Raises ConfigError (exit 2) naming each bad key, its value, its origin and what is allowed.
    """
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file is not None:
        layers.append((f"file {config_file}", read_yaml(config_file)))
    layers.append(("environment", read_env(environ)))
    layers.append(("flag", {k: v for k, v in (flags or {}).items() if v is not None}))

    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for origin, values in layers:
        for name, value in values.items():
            if name not in FIELDS:
                raise _unknown(name, origin)
            merged[name] = value
            sources[name] = env_var(name) if origin == "environment" else origin

    nested: dict[str, Any] = {}
    for name, value in merged.items():
        section = FIELDS[name]
        (nested.setdefault(section, {}) if section else nested)[name] = value
    try:
        config = JobConfig.model_validate(nested)
    except ValidationError as exc:
        raise _explain(exc, merged, sources) from None
    return ResolvedConfig(config=config, sources=sources)


def _explain(exc: ValidationError, merged: Mapping[str, Any], sources: Mapping[str, str]) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
        name = next((p for p in reversed(loc) if p in FIELDS), loc[-1] if loc else None)
        if name is None:  # a rule across fields: its message names them
            lines.append(err["msg"].removeprefix("Value error, "))
            continue
        value = merged.get(name, err.get("input"))
        origin = sources.get(name, "default")
        lines.append(f"{_dotted(name) if name in FIELDS else name} = {value!r} (from {origin}): "
            + err["msg"].removeprefix("Value error, "))
    return ConfigError(
        "invalid configuration:\n  " + "\n  ".join(lines),
        hint="fix the value where it came from; `grpo-bootstrap plan --json` shows the resolved config",
    )
