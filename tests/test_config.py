"""Config layering, validation and error messages, with real YAML files in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootstrap.config import FIELDS, JobConfig, env_var, load_config
from bootstrap.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_recipe() -> None:
    config = load_config(environ={}).config
    assert config.model == "Qwen/Qwen2.5-3B-Instruct"
    assert config.dataset == "openai/gsm8k" and config.dataset_config == "main"
    t = config.train
    assert (t.learning_rate, t.adam_beta1, t.adam_beta2, t.weight_decay) == (5e-6, 0.9, 0.99, 0.1)
    assert (t.warmup_ratio, t.lr_scheduler_type, t.max_grad_norm) == (0.1, "cosine", 0.1)
    assert (t.max_steps, t.save_steps, t.seed) == (250, 250, 3407)
    assert t.lora_target_modules == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    ]  # fmt: skip
    assert config.export.export_formats == ["lora", "merged16", "gguf-q4_k_m", "ollama"]


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path, "region: cn\ntrain:\n  learning_rate: 1.0e-5\n  max_steps: 10\nseed: 1\n"
    )
    env = {"GRPO_BOOTSTRAP_LEARNING_RATE": "2e-5", "GRPO_BOOTSTRAP_MAX_STEPS": "20"}
    resolved = load_config(path, environ=env, flags={"max_steps": 30})
    config = resolved.config
    assert config.region == "cn"  # file only
    assert config.train.seed == 1  # a flat key in the file lands in its section
    assert config.train.learning_rate == 2e-5  # env beats file
    assert config.train.max_steps == 30  # flag beats env
    assert resolved.sources["region"] == f"file {path}"
    assert resolved.sources["learning_rate"] == "GRPO_BOOTSTRAP_LEARNING_RATE"
    assert resolved.sources["max_steps"] == "flag"
    assert "model" not in resolved.sources  # defaults are not attributed


def test_none_flags_do_not_override(tmp_path: Path) -> None:
    config = load_config(environ={"GRPO_BOOTSTRAP_REGION": "cn"}, flags={"region": None}).config
    assert config.region == "cn"


def test_env_lists_are_comma_separated() -> None:
    env = {"GRPO_BOOTSTRAP_EXPORT_FORMATS": "lora, gguf-q8_0,ollama"}
    assert load_config(environ=env).config.export.export_formats == ["lora", "gguf-q8_0", "ollama"]


def test_standard_hub_variables() -> None:
    env = {"HF_ENDPOINT": "https://hf-mirror.com", "HF_HUB_OFFLINE": "1"}
    config = load_config(environ=env).config
    assert config.endpoints.hf_endpoint == "https://hf-mirror.com"
    assert config.offline is True
    env["GRPO_BOOTSTRAP_HF_ENDPOINT"] = "http://proxy.corp:8080/"
    assert load_config(environ=env).config.endpoints.hf_endpoint == "http://proxy.corp:8080"


def test_every_field_has_one_env_name() -> None:
    names = [env_var(name) for name in FIELDS]
    assert len(names) == len(set(names))
    for design_name in (
        "GRPO_BOOTSTRAP_HF_ENDPOINT",
        "GRPO_BOOTSTRAP_HF_MIRROR_ENDPOINT",
        "GRPO_BOOTSTRAP_MODELSCOPE_ENDPOINT",
        "GRPO_BOOTSTRAP_REGION",
        "GRPO_BOOTSTRAP_MIRROR",
        "GRPO_BOOTSTRAP_WORKSPACE",
    ):
        assert design_name in names


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("learnig_rate: 1\n", ["unknown config key 'learnig_rate'", "learning_rate"]),
        ("train:\n  region: cn\n", ["unknown config key 'train.region'"]),
        ("train: 3\n", ["section 'train' must be a mapping"]),
        ("- a\n- b\n", ["must be a mapping"]),
        ("region: [unclosed\n", ["not valid YAML"]),
    ],
)
def test_bad_files_are_rejected_with_the_key(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert info.value.exit_code == 2
    for fragment in expected:
        assert fragment in str(info.value)


def test_bad_values_name_key_value_origin_and_what_is_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  max_steps: -5\n")
    env = {"GRPO_BOOTSTRAP_REGION": "mars"}
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=env, flags={"export_formats": ["gguf-q3"]})
    message = str(info.value)
    assert "train.max_steps = -5 (from file" in message and "greater than or equal to 1" in message
    assert "region = 'mars' (from GRPO_BOOTSTRAP_REGION)" in message and "'cn'" in message
    assert "export.export_formats = ['gguf-q3'] (from flag)" in message and "gguf-q4_k_m" in message


def test_unknown_environment_variable_is_rejected() -> None:
    with pytest.raises(ConfigError, match="GRPO_BOOTSTRAP_LEARNIG_RATE"):
        load_config(environ={"GRPO_BOOTSTRAP_LEARNIG_RATE": "1"})
    # the CLI's own variable is not a config key and is not an error
    assert load_config(environ={"GRPO_BOOTSTRAP_CONFIG": "x.yaml"}).config == JobConfig()


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml", environ={})


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (
            {"mirror": "github"},
            "mirror 'github' is not one of auto, huggingface, hf-mirror, modelscope",
        ),
        (
            {"extra_mirrors": ["huggingface=https://x"]},
            "expected NAME=http(s)://URL with a new NAME",
        ),
        ({"push": ["github:me/model"]}, "expected hf:OWNER/NAME or modelscope:OWNER/NAME"),
        ({"hf_endpoint": "ftp://x"}, "must be an http:// or https:// URL"),
        ({"gpu_memory_utilization": 1.5}, "less than or equal to 0.95"),
        ({"gpu_memory_limit_gib": 0}, "greater than 0"),
        ({"cpu_threads": 0}, "greater than or equal to 1"),
    ],
)
def test_rules_across_fields(flags: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match="invalid configuration") as info:
        load_config(environ={}, flags=flags)
    assert fragment in str(info.value)


def test_extra_mirror_can_be_forced() -> None:
    config = load_config(
        environ={}, flags={"extra_mirrors": ["corp=https://hf.corp"], "mirror": "corp"}
    ).config
    assert config.mirror == "corp"


def test_a_key_given_twice_in_a_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("train:\n  max_steps: 100\n  learning_rate: 1.0e-5\n  max_steps: 500\n")
    with pytest.raises(ConfigError, match=r"key 'max_steps' is given twice \(lines 2 and 4\)"):
        load_config(path, environ={})


def test_a_config_file_that_is_not_utf8_names_the_file_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_bytes("system_prompt: 请用中文回答\n".encode("gb18030"))
    with pytest.raises(ConfigError, match="is not UTF-8 text") as caught:
        load_config(path, environ={})
    assert str(path) in str(caught.value) and "save it as UTF-8" in str(caught.value)
