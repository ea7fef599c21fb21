"""The two training backends behind one small interface.

- `trl`: transformers + PEFT LoRA + TRL's GRPOTrainer.  CPU smoke runs, GPUs without unsloth,
  and several GPUs through accelerate.  4-bit loading through bitsandbytes on CUDA; generation
  by HF generate, or by vLLM in TRL's colocate mode (`vllm: on`) or server mode (vllm_server).
- `unsloth`: Unsloth's FastLanguageModel (its kernels, 4-bit, "unsloth" gradient checkpointing)
  with TRL's GRPOTrainer as Unsloth patches it; generation through vLLM (`fast_inference`) when
  the plan chose it, else HF generate.

Unsloth patches transformers and TRL when it is imported, so it must come first: nothing in
this module imports torch, transformers, peft or trl at the top; each backend imports what it
needs in `load()`, and the unsloth backend imports unsloth before anything else.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from abc import ABC, abstractmethod
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar, Literal

from bootstrap import constants as C
from bootstrap.config import TrainConfig
from bootstrap.dtypes import torch_dtype
from bootstrap.errors import EnvironmentUnfit
from bootstrap.planning.plan import BackendChoice

log = logging.getLogger(__name__)

Generation = Literal["vllm", "hf"]


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def bitsandbytes_usable() -> bool:
    """bitsandbytes is installed and CUDA is there (its 8-bit optimiser and 4-bit kernels
    need it)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return False
    return cuda_available()


def _local_device() -> int:
    # Under accelerate/torchrun each process trains on the GPU of its local rank.
    return C.local_rank()


GIB = 1024**3


def _card_fraction(limit_gib: float | None) -> float:
    """The share of this process's GPU that `limit_gib` allows (1.0 without a cap)."""
    if limit_gib is None:
        return 1.0
    import torch

    total = torch.cuda.get_device_properties(_local_device()).total_memory
    return min(1.0, limit_gib * GIB / total)


def limit_gpu_memory(settings: TrainConfig) -> float | None:
    """Hold this process to `gpu_memory_limit_gib` of its GPU; returns the fraction, or None.

    torch's caching allocator then fails an allocation past the cap with the out-of-memory error
    a smaller card would give.  Unsloth runs vLLM's engine inside this process and vLLM takes
    its KV-cache pool through torch, so one cap covers training and generation.  Without CUDA
    there is nothing to cap (logged).
    """
    if settings.gpu_memory_limit_gib is None:
        return None
    if not cuda_available():
        log.info("gpu_memory_limit_gib ignored: no CUDA device")
        return None
    import torch

    fraction = _card_fraction(settings.gpu_memory_limit_gib)
    torch.cuda.set_per_process_memory_fraction(fraction, _local_device())
    log.info(
        "GPU memory capped at %g GiB (%.1f%% of the card)",
        settings.gpu_memory_limit_gib,
        100 * fraction,
    )
    return fraction


def limit_cpu_threads(settings: TrainConfig) -> int | None:
    """Give torch `cpu_threads` threads in this process; returns them, or None (torch's default).

    A small model on a busy CPU runs faster on fewer: its matrices are too small to share out,
    and at every operation's end each thread waits, spinning, for the others, one of which the
    scheduler may have given to another job (the demo beside a second training job: 0.18 s a
    step on one thread, 2-70 s on two).
    """
    if settings.cpu_threads is None:
        return None
    import torch

    torch.set_num_threads(settings.cpu_threads)
    log.info("torch uses %d CPU thread(s) (cpu_threads)", settings.cpu_threads)
    return settings.cpu_threads


DEFAULT_VLLM_SHARE = 0.5  # the notebook's, where neither the profile nor the user sets one


def vllm_share(settings: TrainConfig) -> float:
    """The share of what this job may use (the card, or the cap) that vLLM takes."""
    return settings.gpu_memory_utilization or DEFAULT_VLLM_SHARE


def vllm_memory_utilization(settings: TrainConfig, share: float | None = None) -> float:
    """vLLM's gpu_memory_utilization, which is a fraction of the whole card: `share` (default
    `vllm_share`, training's) of what this job may use."""
    return (share or vllm_share(settings)) * _card_fraction(settings.gpu_memory_limit_gib)


def generation_batch(settings: TrainConfig) -> int:
    """Completions one process generates at a time: TRL's generation_batch_size per process
    (per-device batch x steps_per_generation, which defaults to the accumulation steps)."""
    return (settings.per_device_train_batch_size or 1) * (settings.gradient_accumulation_steps or 1)


class Backend(ABC):
    """Loads the model with its LoRA, supplies the GRPO trainer class, saves and samples.

    Subclasses set `name`; `generation` says how completions are produced ("vllm" or "hf")
    and `reason` why this backend and this generation path were chosen.
    """

    name: ClassVar[Literal["unsloth", "trl"]]

    def __init__(
        self, settings: TrainConfig, model_dir: Path, generation: Generation, reason: str
    ) -> None:
        self.settings = settings
        self.model_dir = model_dir
        self.generation: Generation = generation
        self.reason = reason

    @abstractmethod
    def load(self) -> tuple[Any, Any, Any]:
        """(model, tokenizer, peft_config): either the model already carries its trainable LoRA
        and peft_config is None, or the trainer attaches the LoRA from peft_config."""

    def trainer_class(self) -> type:
        """TRL's GRPOTrainer; imported here so that unsloth (if used) was imported before it."""
        from trl import GRPOTrainer

        return GRPOTrainer

    def config_overrides(self) -> dict[str, Any]:
        """GRPOConfig fields this backend decides (generation engine, checkpointing)."""
        return {
            "use_vllm": False,
            "gradient_checkpointing": self.settings.gradient_checkpointing != "false",
        }

    def save_adapter(self, model: Any, tokenizer: Any, dest: Path) -> None:
        """Write the LoRA adapter (adapter_model.safetensors + adapter_config.json) and the
        tokenizer files into `dest`.

        Only the "default" adapter: TRL adds a frozen "ref" copy as the KL reference when it is
        handed a model that already has a LoRA, and that copy is no part of the result.  This is
        what unsloth's save_lora writes too (PEFT's save_pretrained of the LoRA tensors), except
        that the tensors keep their training dtype.
        """
        model.save_pretrained(str(dest), selected_adapters=["default"])
        tokenizer.save_pretrained(str(dest))

    def generate(
        self,
        model: Any,
        tokenizer: Any,
        messages: list[dict[str, str]],
        *,
        lora_dir: Path | None,
        temperature: float,
        top_p: float,
        max_tokens: int,
    ) -> str:
        """One completion for a chat; without the LoRA when `lora_dir` is None, else with the
        trained adapter (HF generate: the in-memory adapter, which is what `lora_dir` holds)."""
        import torch

        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
        without_lora = model.disable_adapter() if lora_dir is None else nullcontext()
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), without_lora:
                output = model.generate(
                    **inputs,
                    do_sample=temperature > 0,
                    temperature=temperature if temperature > 0 else None,
                    top_p=top_p if temperature > 0 else None,
                    max_new_tokens=max_tokens,
                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                )
        finally:
            model.train(was_training)
        return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


class TrlBackend(Backend):
    """transformers + PEFT LoRA; TRL's own GRPOTrainer, generating with HF generate or with vLLM
    in TRL's colocate mode (one engine inside the training process)."""

    name = "trl"

    def config_overrides(self) -> dict[str, Any]:
        if self.generation != "vllm":
            return super().config_overrides()
        s = self.settings
        # A multi-process launch replaces the mode with TRL's vLLM server (launch/vllm_server.py).
        return {
            **super().config_overrides(),
            "use_vllm": True,
            "vllm_mode": "colocate",
            "vllm_gpu_memory_utilization": vllm_memory_utilization(s),
            # Else the engine reserves room for the model's whole context (32k for Qwen2.5).
            "vllm_max_model_length": s.max_seq_length,
        }

    def load(self) -> tuple[Any, Any, Any]:
        from peft import LoraConfig, prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

        s = self.settings
        set_seed(s.seed)  # the LoRA's random init
        kwargs: dict[str, Any] = {"dtype": torch_dtype(s.dtype)}
        on_cuda = cuda_available()
        if on_cuda:
            kwargs["device_map"] = {"": _local_device()}
        if s.load_in_4bit:
            if not (on_cuda and bitsandbytes_usable()):
                raise EnvironmentUnfit(
                    "load_in_4bit needs CUDA and bitsandbytes, and this machine lacks "
                    + ("bitsandbytes" if on_cuda else "CUDA"),
                    hint="set load_in_4bit: false (GRPO_BOOTSTRAP_LOAD_IN_4BIT=false) or "
                    "install bitsandbytes (pip install 'grpo-bootstrap[gpu]')",
                )
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch_dtype(s.dtype),
            )
        model = AutoModelForCausalLM.from_pretrained(str(self.model_dir), **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if s.load_in_4bit:
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=s.gradient_checkpointing != "false"
            )
        # Handed to the trainer rather than applied here: TRL then computes the KL reference
        # with the (zero-initialised) adapter disabled instead of keeping a frozen copy of it.
        lora = LoraConfig(
            r=s.lora_rank,
            lora_alpha=s.lora_alpha,
            target_modules=list(s.lora_target_modules),
            lora_dropout=0.0,
            bias="none",
            task_type="CAUSAL_LM",
        )
        return model, tokenizer, lora


class UnslothBackend(Backend):
    """Unsloth's FastLanguageModel; vLLM generation through `fast_inference` when chosen."""

    name = "unsloth"

    def load(self) -> tuple[Any, Any, Any]:
        from unsloth import FastLanguageModel  # first: it patches transformers and TRL

        s = self.settings
        use_vllm = self.generation == "vllm"
        # One generation is the step's completions.  Unsloth otherwise lets vLLM run 128-256
        # sequences at once (chosen from free memory), and vLLM captures CUDA graphs for every
        # batch up to twice that: launch time spent on batches no step runs.  TRL's colocate
        # mode bounds its engine the same way.
        engine = {"max_num_seqs": generation_batch(s)} if use_vllm else {}
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=str(self.model_dir),
            max_seq_length=s.max_seq_length,
            dtype=torch_dtype(s.dtype) if s.dtype != "fp32" else None,
            load_in_4bit=s.load_in_4bit,
            fast_inference=use_vllm,
            max_lora_rank=s.lora_rank,
            gpu_memory_utilization=vllm_memory_utilization(s),
            random_state=s.seed,
            **engine,
        )
        model = FastLanguageModel.get_peft_model(
            model,
            r=s.lora_rank,
            target_modules=list(s.lora_target_modules),
            lora_alpha=s.lora_alpha,
            lora_dropout=0,
            bias="none",
            use_gradient_checkpointing=_unsloth_checkpointing(s.gradient_checkpointing),
            random_state=s.seed,
        )
        return model, tokenizer, None

    def config_overrides(self) -> dict[str, Any]:
        # Unsloth's patched GRPOTrainer generates through the model's own vLLM engine
        # (fast_inference) when use_vllm is on; the recipe sets it the same way.
        return {**super().config_overrides(), "use_vllm": self.generation == "vllm"}

    def generate(
        self,
        model: Any,
        tokenizer: Any,
        messages: list[dict[str, str]],
        *,
        lora_dir: Path | None,
        temperature: float,
        top_p: float,
        max_tokens: int,
    ) -> str:
        if self.generation != "vllm":
            from unsloth import FastLanguageModel

            FastLanguageModel.for_inference(model)
            try:
                return super().generate(
                    model, tokenizer, messages, lora_dir=lora_dir,
                    temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                )  # fmt: skip
            finally:
                FastLanguageModel.for_training(model)
        from vllm import SamplingParams

        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens)
        # The seed's 2.7 / 2.9: no lora_request = the base model; load_lora = the saved adapter.
        request = model.load_lora(str(lora_dir)) if lora_dir is not None else None
        outputs = model.fast_generate([text], sampling_params=params, lora_request=request)
        return outputs[0].outputs[0].text


def _unsloth_checkpointing(value: str) -> str | bool:
    return {"unsloth": "unsloth", "true": True, "false": False}[value]


def _import_error(module: str) -> str | None:
    """None when `module` imports, else the reason in one line."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # any failure (ImportError, CUDA init) means unusable  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def make_backend(
    choice: BackendChoice,
    requested: str,
    vllm_toggle: str,
    settings: TrainConfig,
    model_dir: Path,
) -> Backend:
    """The backend the plan chose, imported for real.

    The plan only checked that unsloth/vllm are installed (importing them grabs the GPU); here
    they are imported.  When unsloth was chosen automatically ("auto") and fails to import, the
    job falls back to trl; when the user asked for it, that is EnvironmentUnfit (exit 3).  vLLM
    likewise falls back to HF generate unless `vllm: on` was asked for.  Every decision is
    logged with its reason.
    """
    backend: Backend
    if choice.name == "trl":
        if choice.generation == "vllm" and (failure := _import_error("vllm")) is not None:
            raise EnvironmentUnfit(
                f"generation by vLLM was chosen, but vllm does not import ({failure})",
                hint="set vllm: auto or off to generate with HF, or fix the vllm install",
            )
        backend = TrlBackend(settings, model_dir, choice.generation, choice.reason)
    elif (failure := _import_error("unsloth")) is not None:
        if requested == "unsloth":
            raise EnvironmentUnfit(
                f"the unsloth backend was requested but unsloth does not import ({failure})",
                hint="use --backend trl, or fix the unsloth install "
                "(pip install 'grpo-bootstrap[gpu]')",
            )
        backend = TrlBackend(
            settings, model_dir, "hf", f"unsloth does not import ({failure}): plain TRL + PEFT"
        )
    elif choice.generation == "vllm" and (failure := _import_error("vllm")) is not None:
        if vllm_toggle == "on":
            raise EnvironmentUnfit(
                f"vllm: on, but vllm does not import ({failure})",
                hint="set vllm: auto or off to generate with HF, or fix the vllm install",
            )
        backend = UnslothBackend(
            settings,
            model_dir,
            "hf",
            f"{choice.reason}, but vllm does not import ({failure}): HF generate",
        )
    else:
        backend = UnslothBackend(settings, model_dir, choice.generation, choice.reason)
    log.info("backend %s, generation %s: %s", backend.name, backend.generation, backend.reason)
    return backend
