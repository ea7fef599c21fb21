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
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bootstrap import constants as C
from bootstrap.dtypes import Precision
from bootstrap.errors import ConfigError

RegionRequest = Literal["auto", "cn", "global"]
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
DEFAULT_RECIPE = "qwen2.5-3b"
# The built-in mirrors' names, the one spelling every module uses (--mirror, detect, plan).
HUGGINGFACE, HF_MIRROR, MODELSCOPE = "huggingface", "hf-mirror", "modelscope"
BUILTIN_MIRRORS = (HUGGINGFACE, HF_MIRROR, MODELSCOPE)
BackendRequest = Literal["auto", "unsloth", "trl"]
Toggle = Literal["auto", "on", "off"]
Distributed = Literal["ddp", "zero2", "zero3"]
Tracker = Literal["tensorboard", "wandb", "trackio"]
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

    dtype: Precision | None = None
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
    cpu_threads: int | None = Field(
        None,
        ge=1,
        description="torch's CPU threads in training and evaluation; None = torch's default, "
        "one per core",
    )
    learning_rate: float = Field(5e-6, gt=0, lt=1)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.99, ge=0, lt=1)
    weight_decay: float = Field(0.1, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    lr_scheduler_type: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    optim: str = Field(
        "adamw_8bit", description="the notebook's; torch's adamw on machines without bitsandbytes"
    )
    temperature: float = Field(
        0.9, gt=0, description="sampling temperature of the generations (TRL 0.14's)"
    )
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = Field(
        "grpo", description="TRL's loss; grpo is the notebook's per-sequence mean"
    )
    prompt_truncation: Literal["drop", "left"] = Field(
        "drop", description="prompts past max_prompt_length: dropped, or cut to their last tokens"
    )
    logging_steps: int = Field(1, ge=1)
    report_to: list[Tracker] = Field(
        [],
        description="experiment trackers besides metrics.jsonl (tensorboard, wandb, trackio; "
        "none); their logs go to <workspace>/tracking, offline unless wandb has a key",
    )
    per_device_train_batch_size: int | None = Field(None, ge=1)
    gradient_accumulation_steps: int | None = Field(None, ge=1)
    num_generations: int | None = Field(None, ge=2)
    max_prompt_length: int | None = Field(None, ge=16)
    max_completion_length: int | None = Field(None, ge=8)
    max_steps: int = Field(250, ge=1)
    save_steps: int = Field(250, ge=1, description="checkpoint interval; SIGTERM also saves")
    max_grad_norm: float = Field(0.1, gt=0)
    vllm: Toggle = Field(
        "auto",
        description="vLLM generation: the unsloth backend's fast_inference (auto: where it can "
        "run); with the trl backend on one GPU, TRL's colocate mode (on only)",
    )
    system_prompt: str | None = Field(None, description="None = the recipe's XML format prompt")
    one_shot: bool = Field(False, description="show one worked example first (for small models)")
    sample_question: str = "How many r's are in strawberry?"
    sample_temperature: float = Field(0.8, ge=0)
    sample_top_p: float = Field(0.95, gt=0, le=1)
    sample_max_tokens: int = Field(1024, ge=1)
    # Several GPUs / machines (bootstrap/planning/launch.py): these say where the job runs, not
    # what a step computes, except that more processes mean a larger global batch.
    gpus: int | Literal["auto"] = Field(
        1, description="GPUs per machine (training processes); auto = every visible GPU"
    )
    distributed: Distributed = Field("ddp", description="ddp, or DeepSpeed ZeRO stage 2 / 3")
    vllm_server: bool = Field(
        False, description="TRL's vLLM server on one GPU, training on the rest"
    )
    num_machines: int = Field(1, ge=1)
    machine_rank: int = Field(0, ge=0)
    main_process_ip: str | None = Field(
        None, description="rank 0's address; needed with num_machines > 1"
    )
    main_process_port: int = Field(29500, ge=1, le=65535)

    @field_validator("report_to", mode="before")
    @classmethod
    def _no_tracker(cls, value: Any) -> Any:
        """`none` (TRL's word for it) is the empty list."""
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and [str(v).lower() for v in value] == ["none"]:
            return []
        return value

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
    eval_reward: str | None = Field(
        None,
        description="the reward whose score > 0 makes an answer correct; None = the correctness one",
    )
    eval_protocol: Literal["recipe", "lm-eval-gsm8k"] = Field(
        "recipe",
        description="recipe: the training prompt, zero-shot; lm-eval-gsm8k: lm-evaluation-harness's "
        "gsm8k prompt, few-shot, no chat template (comparable with published figures)",
    )
    eval_shots: int = Field(5, ge=0, le=16, description="examples for eval_protocol lm-eval-gsm8k")
    skip_base_eval: bool = False


class ExportConfig(_Section):
    export_formats: list[ExportFormat] = Field(
        ["lora", "merged16", "gguf-q4_k_m", "ollama"],
        min_length=1,
        description="at least one; export writes only these",
    )
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

    workspace: Path = Field(Path(C.DEFAULT_WORKSPACE), validate_default=True)
    recipe: str = Field(
        DEFAULT_RECIPE,
        description="a shipped recipe (bootstrap/recipes/NAME.yaml) or a recipe file",
    )
    model: str = "Qwen/Qwen2.5-3B-Instruct"
    model_revision: str | None = Field(None, description="None = the catalog's pinned revision")
    modelscope_model: str | None = Field(None, description="ModelScope id where it differs")
    dataset: str = Field(
        "openai/gsm8k",
        description="a hub id, or a local .jsonl/.json/.csv/.parquet file or directory (a path: "
        "starting with ./, ../, / or ~, or naming such a file)",
    )
    dataset_config: str | None = Field("main", description="the hub dataset's subset, if any")
    dataset_revision: str | None = None
    modelscope_dataset: str | None = None
    prompt_column: str = Field("question", description="the dataset column holding the prompt")
    answer_column: str = Field("answer", description="the dataset column holding the answer")
    system_column: str | None = Field(None, description="a column holding a per-row system prompt")
    answer_format: Literal["gsm8k", "plain"] = Field(
        "gsm8k", description='gsm8k: the gold answer is the number after "####"; plain: the text'
    )
    eval_fraction: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="rows held out to evaluate on when the dataset has no test split",
    )
    rewards: list[str] | None = Field(
        None,
        description="reward functions: built-in names (gsm8k.correctness, notebook.xmlcount, "
        "...), package.module:function or path/to/file.py:function; None = the recipe's five",
    )
    reward_weights: list[float] | None = Field(None, description="one per reward; None = all 1.0")
    region: RegionRequest = "auto"
    mirror: str = Field(
        "auto", description="auto, huggingface, hf-mirror, modelscope or an extra mirror's name"
    )
    extra_mirrors: list[str] = Field(
        [], description="NAME=URL of more HF-API mirrors (a company proxy), tried first"
    )
    offline: bool = False
    profile: str | None = Field(None, description="None = chosen from the GPU")
    backend: BackendRequest = "auto"
    detect_timeout_s: float = Field(1.5, gt=0, le=30)
    fetch_attempts: int = Field(5, ge=1, le=50, description="tries per mirror before the next")
    fetch_max_seconds: float = Field(3600, gt=0, description="time per mirror before the next")
    fetch_backoff_s: float = Field(1.0, ge=0, description="first retry wait; doubles, with jitter")
    fetch_max_wait_s: float = Field(60, ge=0, description="cap on one wait, Retry-After included")
    fetch_downloader: Literal["auto", "aria2c", "hub"] = Field(
        "auto", description="auto = aria2c on HF-API mirrors where installed, else the hub client"
    )
    fetch_connections: int = Field(8, ge=1, le=16, description="connections per file (aria2c)")
    fetch_stall_s: float = Field(
        60, gt=0, description="no new byte for this long stops a download, to be tried again"
    )
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    export: ExportConfig = ExportConfig()
    endpoints: EndpointsConfig = EndpointsConfig()

    @field_validator("workspace")
    @classmethod
    def _absolute_workspace(cls, path: Path) -> Path:
        # The stages of `run` work in processes of their own, started elsewhere (their working
        # directory is inside the workspace): a relative path would point somewhere else there.
        return path.expanduser().absolute()

    @field_validator("dataset")
    @classmethod
    def _local_dataset_absolute(cls, value: str) -> str:
        # The stages read it from processes of their own, started elsewhere (see workspace).
        return str(Path(value).expanduser().absolute()) if is_local_path(value) else value

    @field_validator("rewards")
    @classmethod
    def _reward_files_absolute(cls, specs: list[str] | None) -> list[str] | None:
        if specs is None:
            return None
        if not specs:
            raise ValueError("give at least one reward, or leave rewards unset for the recipe's")
        out = []
        for spec in specs:
            target, sep, name = spec.rpartition(":")
            if sep and target.endswith(".py"):
                spec = f"{Path(target).expanduser().absolute()}:{name}"
            out.append(spec)
        return out

    @model_validator(mode="after")
    def _weights_match_rewards(self) -> JobConfig:
        weights = self.reward_weights
        if weights is not None and len(weights) != len(self.rewards or ()):
            raise ValueError(
                f"reward_weights has {len(weights)} value(s) for {len(self.rewards or ())} "
                "reward(s) named in rewards: give one weight per reward (rewards must be set)"
            )
        return self

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
            raise ValueError(
                f"machine_rank {t.machine_rank} must be below num_machines {t.num_machines}"
            )
        if t.num_machines > 1 and not t.main_process_ip:
            raise ValueError("num_machines > 1 needs main_process_ip (the address of machine 0)")
        return self


_DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def is_local_path(dataset: str) -> bool:
    """Whether a `dataset` value names a local file or directory rather than a hub id."""
    return dataset.startswith(("./", "../", "/", "~")) or dataset.endswith(_DATA_SUFFIXES)


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
_LIST_FIELDS = {
    "lora_target_modules",
    "export_formats",
    "push",
    "extra_mirrors",
    "rewards",
    "reward_weights",
    "report_to",
}


def env_var(name: str) -> str:
    """The environment variable that sets config field `name`."""
    return f"{C.ENV_PREFIX}{name.upper()}"


def _dotted(name: str) -> str:
    section = FIELDS[name]
    return f"{section}.{name}" if section else name


def parse_set_pairs(values: Iterable[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` pairs as config flags, each value parsed as its field's type.

    Raises:
        ConfigError: a pair without `=`, or a key no field has.
    """
    parsed: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        if key not in FIELDS:
            raise unknown_key(key, f"--set {item}")
        parsed[key] = parse_text(key, raw)
    return parsed


def unknown_key(key: str, origin: str) -> ConfigError:
    """The error for a key no field has, with the closest valid keys suggested."""
    close = difflib.get_close_matches(key, FIELDS, n=3)
    hint = (
        f"did you mean {', '.join(close)}?"
        if close
        else "run `grpo-bootstrap plan --json` to see every key"
    )
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
                    raise unknown_key(f"{key}.{sub}", f"in {path}")
                flat[str(sub)] = sub_value
        elif key in FIELDS:
            flat[key] = value
        else:
            raise unknown_key(key, f"in {path}")
    return flat


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error: YAML's rule is
    that keys are unique, and PyYAML's silent "the last one wins" hides a typo'd edit."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"key {key!r} is given twice (lines {seen[key]} and "
                    f"{key_node.start_mark.line + 1})",
                    key_node.start_mark,
                )  # fmt: skip
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> dict[str, Any]:
    """Flat {field: value} from a YAML config file; nested sections and flat keys both work."""
    return _flatten_yaml(_load_yaml(path), Path(path))


def _load_yaml(path: Path) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.start}: {exc.reason})",
            hint="save it as UTF-8 (most editors: 'Save with encoding')",
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc


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
            raise unknown_key(name, f"environment variable {env_var(name)}")
        values[name] = parse_text(name, raw)
    return values


def parse_text(name: str, raw: str) -> Any:
    """A value typed as text (env var, ``--set``): lists are comma-separated, the rest is
    left to the field's validator ("5e-6" -> float, "true" -> bool, "" -> None)."""
    if name in _LIST_FIELDS:
        return [v.strip() for v in raw.split(",") if v.strip()]
    return None if raw.strip() == "" else raw


class ModelFacts(BaseModel):
    """What a recipe says of its model's size, for planning/fit.py's memory estimate."""

    parameters_b: float  # billions
    hidden_size: int
    intermediate_size: int
    layers: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool = False  # one matrix for the input embedding and the output head


class Recipe(BaseModel, frozen=True):
    """A recipe file: config values (a layer just above the defaults) for one model, the
    settings it wants on each profile, and what is known of the model.

    `profiles` fills, once the GPU's profile is chosen, the training values no layer set, before
    the profile's own (a 14B model wants a smaller LoRA rank on a 16 GB card than a 3B one).
    """

    name: str
    path: str
    about: str
    chat_template: str = ""
    reward_set: Literal["gsm8k", "notebook"] = "gsm8k"
    values: dict[str, Any]  # flat field -> value, as a config file gives them
    profiles: dict[str, dict[str, Any]] = {}
    model_facts: ModelFacts | None = None


_RECIPE_META = frozenset({"about", "chat_template", "reward_set", "profiles", "model_facts"})


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def read_recipe(name: str) -> Recipe:
    """A shipped recipe by name, or a recipe file by path; ConfigError naming the choices."""
    path = (
        Path(name).expanduser()
        if name.endswith((".yaml", ".yml"))
        else RECIPES_DIR / f"{name}.yaml"
    )
    if not path.is_file():
        raise ConfigError(
            f"recipe {name!r} not found",
            hint=f"shipped recipes: {', '.join(recipe_names())}; or a path to a recipe .yaml",
        )
    data = _load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    meta = {k: data.pop(k) for k in list(data) if k in _RECIPE_META}
    profiles = meta.get("profiles") or {}
    for profile, values in profiles.items():
        for key in values or {}:
            if FIELDS.get(key) != "train":
                raise ConfigError(f"{path}: profiles.{profile}.{key} is not a training setting")
    try:
        return Recipe(
            name=path.stem, path=str(path), values=_flatten_yaml(data, path), profiles=profiles,
            **{k: v for k, v in meta.items() if k != "profiles"},
        )  # fmt: skip
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ConfigError(
            f"{path} is not a valid recipe: {where}: {error['msg']}",
            hint="a recipe needs `about:` (one line saying what it is for); see bootstrap/recipes/",
        ) from None


class ResolvedConfig(BaseModel):
    """The config plus, for every value that is not a default, the layer that set it."""

    config: JobConfig
    sources: dict[str, str]
    recipe: Recipe


def load_config(
    config_file: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> ResolvedConfig:
    """Merge defaults < recipe < YAML < env < flags into a validated JobConfig.

    The recipe is named by any layer above it (`recipe`, the highest one wins) and is read
    first.  Raises ConfigError (exit 2) naming each bad key, its value, its origin and what is
    allowed.
    """
    upper: list[tuple[str, dict[str, Any]]] = []
    if config_file is not None:
        upper.append((f"file {config_file}", read_yaml(config_file)))
    upper.append(("environment", read_env(environ)))
    upper.append(("flag", {k: v for k, v in (flags or {}).items() if v is not None}))
    name = next((v["recipe"] for _, v in reversed(upper) if v.get("recipe")), DEFAULT_RECIPE)
    recipe = read_recipe(str(name))
    layers = [(f"recipe {recipe.name}", recipe.values), *upper]

    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for origin, values in layers:
        for name, value in values.items():
            if name not in FIELDS:
                raise unknown_key(name, origin)
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
    return ResolvedConfig(config=config, sources=sources, recipe=recipe)


def _explain(
    exc: ValidationError, merged: Mapping[str, Any], sources: Mapping[str, str]
) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
        name = next((p for p in reversed(loc) if p in FIELDS), loc[-1] if loc else None)
        if name is None:  # a rule across fields: its message names them
            lines.append(err["msg"].removeprefix("Value error, "))
            continue
        value = merged.get(name, err.get("input"))
        origin = sources.get(name, "default")
        lines.append(
            f"{_dotted(name) if name in FIELDS else name} = {value!r} (from {origin}): "
            + err["msg"].removeprefix("Value error, ")
        )
    return ConfigError(
        "invalid configuration:\n  " + "\n  ".join(lines),
        hint="fix the value where it came from; `grpo-bootstrap plan --json` shows the resolved config",
    )
