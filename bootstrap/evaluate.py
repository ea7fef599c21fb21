"""`eval`: GSM8K test accuracy and format rates of the base model and of base + LoRA.

Generation is greedy and batched -- vLLM when the plan chose it and it is importable (CUDA
only), else HF `generate` with left padding -- and sits behind one seam, `Engine.generate`:
everything after it (scoring, the report) is plain functions of the completions.

Scores use the reward functions themselves, so "accuracy" means exactly what the correctness
reward paid for in training: the text inside the last <answer> tag equals the gold number after
normalisation.  The strict and soft format rates are the share of completions the
strict_format / soft_format rewards accept.

Writes <workspace>/report/: report.json (EvalReport), report.md (before/after table, example
answers, plots), <model>-completions.jsonl (every completion) and, when training logged metrics,
rewards.png and completion_length.png.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ValidationError

from bootstrap import constants as C
from bootstrap.caches import workspace_caches
from bootstrap.dtypes import Precision, torch_dtype, vllm_lora_dtype
from bootstrap.model_inputs import adapter_dir, base_model_dir, recipe_system_prompt
from bootstrap.planning.plan import Plan
from bootstrap.task.answers import (
    extract_xml_answer,
    lm_eval_flexible,
    lm_eval_matches,
    lm_eval_strict,
)
from bootstrap.task.dataset import load_split
from bootstrap.task.registry import load_reward
from bootstrap.task.rewards import soft_format, strict_format
from bootstrap.train.backends import limit_cpu_threads, vllm_memory_utilization
from bootstrap.train.metrics import REWARD_PREFIX, REWARD_SUFFIX, read_metrics
from bootstrap.workspace import Workspace, atomic_file, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

Which = Literal["base", "trained"]
Messages = list[dict[str, str]]
# A prompt is a conversation (the recipe's protocol, rendered with the model's chat template) or
# text given to the model as it is (lm-eval's few-shot protocol).
Prompt = Messages | str
EXAMPLES_KEPT = 3
_EXAMPLE_CHARS = 1500


class Engine(Protocol):
    """Greedy completions for chat prompts, from the base model or base + LoRA."""

    name: str

    def generate(
        self, prompts: Sequence[Prompt], *, trained: bool, progress: Callable[[int], None]
    ) -> list[str]:
        """One completion per prompt, in order; `progress(n)` after each batch of n prompts."""
        ...


class Example(BaseModel):
    question: str
    gold: str
    completion: str
    extracted: str
    correct: bool


class ModelScores(BaseModel):
    model: Which
    rows: int
    correct: int
    accuracy: float  # the task's own metric: eval_reward above 0
    strict_format_rate: float
    soft_format_rate: float
    # lm-evaluation-harness gsm8k's two readings of the same completions: "#### N", and the
    # last number anywhere.  With the recipe's prompt (no "####" asked for) strict-match stays
    # near 0; the lm-eval protocol (eval_protocol) is what compares with published figures.
    strict_match_accuracy: float = 0.0
    flexible_extract_accuracy: float = 0.0
    engine: str
    seconds: float
    examples: list[Example]


class EvalSettings(BaseModel):
    """What the numbers depend on; results of a report with other settings are not reused."""

    model: str
    dataset_sha256: str
    rows: int
    max_new_tokens: int
    system_prompt: str
    one_shot: bool = False
    greedy: bool = True
    protocol: str = "recipe"
    shots: int = 0
    chat_template: bool = True  # the prompt rendered with the model's chat template
    eval_reward: str = "gsm8k.correctness"


class EvalReport(BaseModel):
    settings: EvalSettings
    results: dict[str, ModelScores]
    plots: list[str]
    created: str


# --- scoring -----------------------------------------------------------------------------------


class Rows(BaseModel):
    """The evaluation's rows as the rewards see them: prompts, gold answers, dataset columns."""

    questions: list[str]
    golds: list[str]
    gold_texts: list[str]
    prompts: list[Prompt]
    columns: dict[str, list[Any]]  # every other dataset column, by name (TRL's kwargs)


def score(
    which: Which,
    rows: Rows,
    completions: Sequence[str],
    *,
    correct_if: Callable[..., Sequence[float | None]],
    engine: str,
    seconds: float,
) -> tuple[ModelScores, list[bool]]:
    """The scores of `completions` (one per row): the task's metric (`correct_if` above 0), the
    format rates, and lm-eval's strict-match and flexible-extract accuracies; and each row's
    verdict."""
    n = len(rows.golds)
    if not n or len(completions) != n:
        raise ValueError(f"{n} rows, {len(completions)} completions")
    kwargs = {
        **rows.columns,
        "answer": rows.golds,
        "gold_text": rows.gold_texts,
        "question": rows.questions,
    }
    verdicts = correct_if(prompts=rows.prompts, completions=list(completions), **kwargs)
    correct = [bool(v is not None and v > 0) for v in verdicts]
    return ModelScores(
        model=which,
        rows=n,
        correct=sum(correct),
        accuracy=sum(correct) / n,
        strict_format_rate=sum(strict_format(c) > 0 for c in completions) / n,
        soft_format_rate=sum(soft_format(c) > 0 for c in completions) / n,
        strict_match_accuracy=_share(lm_eval_strict, completions, rows.gold_texts),
        flexible_extract_accuracy=_share(lm_eval_flexible, completions, rows.gold_texts),
        engine=engine,
        seconds=round(seconds, 2),
        examples=[
            Example(question=q, gold=g, completion=c, extracted=extract_xml_answer(c), correct=ok)
            for q, g, c, ok in list(
                zip(rows.questions, rows.golds, completions, correct, strict=True)
            )[:EXAMPLES_KEPT]
        ],
    ), correct


def _share(
    read: Callable[[str], str | None], completions: Sequence[str], golds: Sequence[str]
) -> float:
    return sum(lm_eval_matches(read(c), g) for c, g in zip(completions, golds, strict=True)) / len(
        golds
    )


# --- generation engines ------------------------------------------------------------------------


def _chat_texts(tokenizer: Any, prompts: Sequence[Prompt]) -> list[str]:
    return [
        p if isinstance(p, str)
        else tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]  # fmt: skip


class HFEngine:
    """transformers `generate`, greedy, left-padded batches; the LoRA switched off for base."""

    name = "hf"

    def __init__(
        self,
        base: Path,
        adapter: Path | None,
        *,
        dtype: Precision,
        batch_size: int,
        max_new_tokens: int,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        # CPUs without bf16 matrix units run bf16 slower than fp32; a GPU uses the plan's dtype.
        precision = "fp32" if self.device == "cpu" else dtype
        self.tokenizer = AutoTokenizer.from_pretrained(str(base), padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch_dtype(precision))
        model = model.to(self.device)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter))
        self.model = model.eval()
        self.has_adapter = adapter is not None
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens

    def _generation_config(self) -> Any:
        from transformers import GenerationConfig

        eos = self.model.generation_config.eos_token_id
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=eos if eos is not None else self.tokenizer.eos_token_id,
        )

    def generate(
        self, prompts: Sequence[Prompt], *, trained: bool, progress: Callable[[int], None]
    ) -> list[str]:
        import torch

        if trained and not self.has_adapter:
            raise ValueError("this engine was loaded without the LoRA adapter")
        texts = _chat_texts(self.tokenizer, prompts)
        # Similar lengths in one batch waste less compute on padding; results go back in order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        results: dict[int, str] = {}
        config = self._generation_config()
        switch = self.model.disable_adapter() if self.has_adapter and not trained else _nothing()
        with torch.no_grad(), switch:
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in batch],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=False,
                ).to(self.device)
                out = self.model.generate(**enc, generation_config=config)
                decoded = self.tokenizer.batch_decode(
                    out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
                )
                results.update(zip(batch, decoded, strict=True))
                progress(len(batch))
        return [results[i] for i in range(len(texts))]


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def sampler_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What vLLM's engine needs to start where FlashInfer is not installed: its PyTorch sampler.

    vLLM 0.24 imports FlashInfer unguarded when it builds its sampler unless
    VLLM_USE_FLASHINFER_SAMPLER is 0 (FlashInfer is one of its requirements, but an install
    without it otherwise fails at engine start: seen on the GPU machine).  Unsloth does the
    same for its own engine.  A value the user set is kept: nothing is returned then.
    """
    env = os.environ if environ is None else environ
    if importlib.util.find_spec("flashinfer") is not None or "VLLM_USE_FLASHINFER_SAMPLER" in env:
        return {}
    log.info("FlashInfer is not installed: vLLM samples with PyTorch")
    return {"VLLM_USE_FLASHINFER_SAMPLER": "0"}


# The evaluation engine runs alone in its process (`run` evaluates in a stage of its own), so it
# may take most of what the job may use; the rest is the CUDA context's and the sampler's.
EVAL_VLLM_SHARE = 0.85
# Room for the longest chat prompt before the answer, in tokens.  Without a bound vLLM sizes
# for the model's whole context (32k for Qwen2.5), and under a 16 GB cap the KV cache for one
# such sequence may not fit beside the weights.
EVAL_PROMPT_TOKENS = 1024


# vLLM serves only these LoRA ranks (vllm.config.lora.MaxLoRARanks, 0.24); max_lora_rank is a
# bound, so the smallest one at or above the adapter's serves it.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Sequences generated at once: vLLM's own default, set here because the CUDA graphs are sized
# from it.
EVAL_MAX_SEQS = 256


def lora_rank_bound(rank: int) -> int:
    """The max_lora_rank vLLM accepts that serves an adapter of `rank`."""
    if rank > VLLM_LORA_RANKS[-1]:
        raise ValueError(f"vLLM serves LoRA ranks up to {VLLM_LORA_RANKS[-1]}, not {rank}")
    return next(bound for bound in VLLM_LORA_RANKS if bound >= rank)


def capture_sizes(max_seqs: int) -> list[int]:
    """Batch sizes to capture CUDA graphs for: powers of two up to `max_seqs`, and `max_seqs`.

    vLLM's default captures 67 sizes up to 512 sequences, each twice (a full graph for decode,
    a piecewise one for prefill) and twice again with LoRA enabled: most of an evaluation
    engine's start.  A batch runs in the graph of the next size up, and decoding a few billion
    parameters is bound by reading the weights, so the padding costs little.
    """
    sizes = [1 << i for i in range(max_seqs.bit_length()) if 1 << i < max_seqs]
    return [*sizes, max_seqs]


def engine_arguments(
    base: Path, plan: Plan, *, max_new_tokens: int, adapter_rank: int | None = None
) -> dict[str, object]:
    """vLLM's LLM(...) arguments for an evaluation, the same for the base and the trained model.

    `run` evaluates the base model and the trained one in two processes, each with its engine.
    vLLM keys its compile cache (<workspace>/cache/vllm) on the engine's configuration, LoRA
    settings included, so both engines enable LoRA with the rank training uses: the second one
    then loads what the first compiled instead of compiling again.  An adapter of a higher rank
    than the plan's (trained under another config) raises the bound, at the price of a compile.
    """
    training = plan.training or plan.config.train
    rank = max(training.lora_rank or 16, adapter_rank or 0)
    return {
        "model": str(base),
        "dtype": vllm_lora_dtype(training.dtype),
        "gpu_memory_utilization": vllm_memory_utilization(training, EVAL_VLLM_SHARE),
        "max_model_len": min(EVAL_PROMPT_TOKENS + max_new_tokens, _context_length(base)),
        "max_num_seqs": EVAL_MAX_SEQS,
        "enable_lora": True,
        "max_lora_rank": lora_rank_bound(rank),
        "compilation_config": {"cudagraph_capture_sizes": capture_sizes(EVAL_MAX_SEQS)},
        "seed": plan.config.train.seed,
    }


class VLLMEngine:
    """vLLM offline generation (CUDA), the LoRA served through a LoRARequest."""

    name = "vllm"

    def __init__(
        self, base: Path, adapter: Path | None, *, plan: Plan, max_new_tokens: int
    ) -> None:
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest

        arguments = engine_arguments(
            base,
            plan,
            max_new_tokens=max_new_tokens,
            adapter_rank=_adapter_rank(adapter) if adapter is not None else None,
        )
        with C.scoped_environment(sampler_environment()):  # read while the engine starts
            self.llm = LLM(**arguments)
        self.tokenizer = self.llm.get_tokenizer()
        self.sampling = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        self.lora = LoRARequest("trained", 1, str(adapter)) if adapter is not None else None

    def generate(
        self, prompts: Sequence[Prompt], *, trained: bool, progress: Callable[[int], None]
    ) -> list[str]:
        if trained and self.lora is None:
            raise ValueError("this engine was loaded without the LoRA adapter")
        outputs = self.llm.generate(
            _chat_texts(self.tokenizer, prompts),
            self.sampling,
            lora_request=self.lora if trained else None,
        )
        progress(len(prompts))
        return [o.outputs[0].text for o in outputs]


def _context_length(model: Path) -> int:
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    return int(config.get("max_position_embeddings") or EVAL_PROMPT_TOKENS)


def _adapter_rank(adapter: Path) -> int:
    return int(json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))["r"])


def _vllm_usable(plan: Plan) -> bool:
    if plan.backend.generation != "vllm" or importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def make_engine(plan: Plan, workspace: Workspace, which: Sequence[Which]) -> Engine:
    """vLLM where the plan chose it and it can run, else HF; with the LoRA if `trained` is asked."""
    base = base_model_dir(plan, workspace)
    adapter = adapter_dir(workspace) if "trained" in which else None
    settings = plan.config.eval
    if _vllm_usable(plan):
        return VLLMEngine(base, adapter, plan=plan, max_new_tokens=settings.eval_max_new_tokens)
    dtype = plan.training.dtype if plan.training and plan.training.dtype else "fp32"
    return HFEngine(
        base,
        adapter,
        dtype=dtype,
        batch_size=settings.eval_batch_size,
        max_new_tokens=settings.eval_max_new_tokens,
    )


# --- report --------------------------------------------------------------------------------------


def plot_metrics(metrics: Path, out_dir: Path) -> list[str]:
    """rewards.png (each reward's mean and the total per step) and completion_length.png from
    metrics.jsonl; returns the file names written (none without metrics)."""
    lines = [line for line in read_metrics(metrics) if isinstance(line.get("step"), int)]
    if not lines:
        return []
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    steps = [line["step"] for line in lines]
    reward_keys = sorted(
        {
            k
            for line in lines
            for k in line
            if k.startswith(REWARD_PREFIX) and k.endswith(REWARD_SUFFIX)
        }
    )
    series = {
        "rewards.png": ("Rewards per step", "mean reward", ["reward", *reward_keys]),
        "completion_length.png": (
            "Completion length per step",
            "mean tokens",
            ["completion_length"],
        ),
    }
    written = []
    for name, (title, ylabel, keys) in series.items():
        fig = Figure(figsize=(8, 4.5), dpi=100)
        FigureCanvasAgg(fig)  # Agg needs no display and no global pyplot state
        ax = fig.add_subplot()
        for key in keys:
            points = [
                (s, line[key])
                for s, line in zip(steps, lines, strict=True)
                if isinstance(line.get(key), (int, float))
            ]
            if points:
                label = (
                    key.removeprefix(REWARD_PREFIX).removesuffix(REWARD_SUFFIX)
                    if key != "reward"
                    else "total"
                )
                ax.plot(
                    *zip(*points, strict=True),
                    label=label,
                    linewidth=2.5 if key == "reward" else 1.2,
                )
        ax.set(title=title, xlabel="step", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
        with atomic_file(out_dir / name) as tmp:
            fig.savefig(tmp, format="png")
        written.append(name)
    return written


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def render_markdown(report: EvalReport) -> str:
    """report.md: the settings, a before/after table, the plots and a few example answers."""
    s = report.settings
    models = [m for m in ("base", "trained") if m in report.results]
    if s.protocol == "lm-eval-gsm8k":
        asked = (f'lm-evaluation-harness\'s gsm8k prompt ("Question: ...\\nAnswer:"), {s.shots}-shot '
                 "from the first train rows, no chat template")  # fmt: skip
    else:
        asked = (f"the recipe's system prompt, {'one-shot' if s.one_shot else 'zero-shot'}, with the "
                 "model's chat template")  # fmt: skip
    out = [
        "# Evaluation",
        "",
        f"Model `{s.model}`; {s.rows} test rows; {asked}; greedy, at most {s.max_new_tokens} "
        f"new tokens; accuracy is `{s.eval_reward}` scoring above 0.  Strict-match and "
        "flexible-extract read the same completions as lm-evaluation-harness's gsm8k does "
        '("#### N", and the last number).',
        "",
    ]
    if s.system_prompt:
        out += ["System prompt:", "", "```text", s.system_prompt.replace("```", "'''"), "```", ""]
    header = ["metric", *models, *(["change"] if len(models) == 2 else [])]
    out += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for label, field in (
        ("accuracy", "accuracy"),
        ("strict format", "strict_format_rate"),
        ("soft format", "soft_format_rate"),
        ("lm-eval strict-match", "strict_match_accuracy"),
        ("lm-eval flexible-extract", "flexible_extract_accuracy"),
    ):
        values = [getattr(report.results[m], field) for m in models]
        cells = [_percent(v) for v in values]
        if field == "accuracy":
            cells = [
                f"{c} ({report.results[m].correct}/{report.results[m].rows})"
                for c, m in zip(cells, models, strict=True)
            ]
        change = [f"{100 * (values[1] - values[0]):+.1f} pts"] if len(models) == 2 else []
        out.append(f"| {label} | " + " | ".join(cells + change) + " |")
    out.append("")
    out.append(
        "Engine and time: "
        + "; ".join(
            f"{m} {report.results[m].engine}, {report.results[m].seconds:.0f} s" for m in models
        )
    )
    out += ["", "## Training curves", ""]
    out += [f"![{p.removesuffix('.png')}]({p})" for p in report.plots] or [
        "No training metrics yet (metrics.jsonl is empty)."
    ]
    out += ["", "## Example answers", ""]
    first = report.results[models[0]].examples
    for i, example in enumerate(first):
        out += [f"### {i + 1}. {example.question}", "", f"Gold answer: **{example.gold}**", ""]
        for m in models:
            shown = report.results[m].examples[i] if i < len(report.results[m].examples) else None
            if shown is None:
                continue
            mark = "correct" if shown.correct else f"wrong (extracted {shown.extracted[:60]!r})"
            text = shown.completion[:_EXAMPLE_CHARS] + (
                "…" if len(shown.completion) > _EXAMPLE_CHARS else ""
            )
            out += [f"**{m}** — {mark}", "", "```text", text.replace("```", "'''"), "```", ""]
    return "\n".join(out) + "\n"


def _previous_results(path: Path, settings: EvalSettings) -> dict[str, ModelScores]:
    """Results of an earlier run with the same settings (base before training, trained after)."""
    if not path.is_file():
        return {}
    try:
        previous = EvalReport.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, ValueError):
        return {}
    return dict(previous.results) if previous.settings == settings else {}


def _write_completions(
    path: Path, rows: Rows, completions: Sequence[str], verdicts: Sequence[bool]
) -> None:
    lines = [
        {
            "question": q,
            "gold": g,
            "completion": c,
            "extracted": extract_xml_answer(c),
            "correct": ok,
            "strict_format": strict_format(c) > 0,
            "soft_format": soft_format(c) > 0,
            "strict_match": lm_eval_matches(lm_eval_strict(c), t),
            "flexible_extract": lm_eval_matches(lm_eval_flexible(c), t),
        }
        for q, g, t, c, ok in zip(
            rows.questions, rows.golds, rows.gold_texts, completions, verdicts, strict=True
        )
    ]
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines))


# --- the stage -----------------------------------------------------------------------------------


@contextmanager
def _progress_bar(show: bool, total: int, label: str) -> Iterator[Callable[[int], None]]:
    if not show:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bootstrap.logs import stderr_console

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=stderr_console(), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _rows(plan: Plan, workspace: Workspace, limit: int | None) -> tuple[Rows, str, int]:
    """The test rows under the evaluation's protocol: (rows, system prompt, shots)."""
    eval_settings = plan.config.eval
    system_prompt = recipe_system_prompt(plan)
    split = load_split(
        workspace.split_path("test"),
        limit=limit or eval_settings.eval_limit,
        system_prompt=system_prompt,
        one_shot=plan.config.train.one_shot,  # ask as training asked
        answer_format=plan.task.columns.answer_format,
    )
    standard = {"prompt", "answer", "gold_text", "question"}
    rows = Rows(
        questions=split["question"], golds=split["answer"], gold_texts=split["gold_text"],
        prompts=split["prompt"],
        columns={name: split[name] for name in split.column_names if name not in standard},
    )  # fmt: skip
    if eval_settings.eval_protocol != "lm-eval-gsm8k":
        return rows, system_prompt, 0
    import pyarrow.parquet as pq

    # lm-eval's gsm8k takes its examples from the first train rows, the answer as written.
    train = pq.read_table(workspace.split_path("train")).slice(0, eval_settings.eval_shots)
    shots = "".join(
        f"Question: {q}\nAnswer: {a}\n\n"
        for q, a in zip(
            train.column("question").to_pylist(), train.column("answer").to_pylist(), strict=True
        )
    )
    prompts: list[Prompt] = [f"{shots}Question: {q}\nAnswer:" for q in rows.questions]
    return rows.model_copy(update={"prompts": prompts}), "", train.num_rows


def _cut_at_next_question(completion: str) -> str:
    """lm-eval's gsm8k stops generating at "Question:": the model's next made-up example."""
    return completion.split("Question:")[0]


def run_eval(
    plan: Plan,
    workspace: Workspace,
    make: Callable[[], Engine],
    *,
    which: Sequence[Which] = ("base", "trained"),
    limit: int | None = None,
    show_progress: bool = True,
) -> EvalReport:
    """Generate with the engine `make()` returns for each of `which`, score, write the report.

    The engine is made only once the test split has been read, so a missing split fails fast.
    """
    split = workspace.split_path("test")
    rows, system_prompt, shots = _rows(plan, workspace, limit)
    protocol = plan.config.eval.eval_protocol
    correct_if = load_reward(plan.task.eval_reward)
    settings = EvalSettings(
        model=plan.config.model,
        dataset_sha256=hashlib.sha256(split.read_bytes()).hexdigest(),
        rows=len(rows.golds),
        max_new_tokens=plan.config.eval.eval_max_new_tokens,
        system_prompt=system_prompt,
        one_shot=plan.config.train.one_shot,
        protocol=protocol,
        shots=shots,
        chat_template=protocol != "lm-eval-gsm8k",
        eval_reward=plan.task.eval_reward,
    )
    out_dir = workspace.report
    out_dir.mkdir(parents=True, exist_ok=True)
    results = _previous_results(out_dir / "report.json", settings)
    engine = make()
    for model in which:
        started = time.monotonic()
        with _progress_bar(show_progress, len(rows.prompts), f"eval {model}") as progress:
            completions = engine.generate(
                rows.prompts, trained=model == "trained", progress=progress
            )
        if protocol == "lm-eval-gsm8k":
            completions = [_cut_at_next_question(c) for c in completions]
        results[model], verdicts = score(
            model, rows, completions, correct_if=correct_if, engine=engine.name,
            seconds=time.monotonic() - started,
        )  # fmt: skip
        _write_completions(out_dir / f"{model}-completions.jsonl", rows, completions, verdicts)
        log.info("eval %s: accuracy %s on %d rows", model, _percent(results[model].accuracy),
                 len(rows.golds))  # fmt: skip
    report = EvalReport(
        settings=settings,
        results={m: results[m] for m in ("base", "trained") if m in results},
        plots=plot_metrics(workspace.metrics, out_dir),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    write_json_atomic(out_dir / "report.json", report.model_dump(mode="json"))
    write_text_atomic(out_dir / "report.md", render_markdown(report))
    return report


def evaluate(
    plan: Plan,
    workspace: Workspace,
    *,
    which: Sequence[Which] = ("base", "trained"),
    limit: int | None = None,
    show_progress: bool = True,
) -> EvalReport:
    """GSM8K test accuracy and format rates of `which` models, written to <workspace>/report/.

    `limit` (else the config's eval_limit, else every row) keeps the first N test rows.
    Raises ConfigError when the test split, the base model or (for "trained") the adapter is
    missing, naming the command that makes it.
    """
    if not which:
        raise ValueError("nothing to evaluate: `which` is empty")
    limit_cpu_threads(plan.training or plan.config.train)
    # vLLM's compile cache (a second evaluation starts warm) and matplotlib's font list.
    with workspace_caches(workspace.cache):
        return run_eval(
            plan,
            workspace,
            lambda: make_engine(plan, workspace, which),
            which=which,
            limit=limit,
            show_progress=show_progress,
        )
