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
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ValidationError

from bootstrap.model_inputs import adapter_dir, base_model_dir, recipe_system_prompt
from bootstrap.plan import Plan
from bootstrap.train.backends import vllm_memory_utilization
from bootstrap.train.caches import use_workspace_caches
from bootstrap.train.data import extract_xml_answer, load_gsm8k_split
from bootstrap.train.metrics import REWARD_PREFIX, REWARD_SUFFIX, read_metrics
from bootstrap.train.rewards import correctness, soft_format, strict_format
from bootstrap.workspace import Workspace, atomic_file, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

Which = Literal["base", "trained"]
Messages = list[dict[str, str]]
EXAMPLES_KEPT = 3
_EXAMPLE_CHARS = 1500


class Engine(Protocol):
    """Greedy completions for chat prompts, from the base model or base + LoRA."""

    name: str

    def generate(
        self, prompts: Sequence[Messages], *, trained: bool, progress: Callable[[int], None]
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
    accuracy: float
    strict_format_rate: float
    soft_format_rate: float
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


class EvalReport(BaseModel):
    settings: EvalSettings
    results: dict[str, ModelScores]
    plots: list[str]
    created: str


# --- scoring -----------------------------------------------------------------------------------


def score(
    which: Which,
    questions: Sequence[str],
    golds: Sequence[str],
    completions: Sequence[str],
    *,
    engine: str,
    seconds: float,
) -> ModelScores:
    """Accuracy and format rates of `completions` against `golds` (same order and length)."""
    if not (len(questions) == len(golds) == len(completions)) or not golds:
        raise ValueError(
            f"{len(questions)} questions, {len(golds)} answers, {len(completions)} completions"
        )
    correct = [correctness(c, g) > 0 for c, g in zip(completions, golds)]
    n = len(golds)
    return ModelScores(
        model=which,
        rows=n,
        correct=sum(correct),
        accuracy=sum(correct) / n,
        strict_format_rate=sum(strict_format(c) > 0 for c in completions) / n,
        soft_format_rate=sum(soft_format(c) > 0 for c in completions) / n,
        engine=engine,
        seconds=round(seconds, 2),
        examples=[
            Example(question=q, gold=g, completion=c, extracted=extract_xml_answer(c), correct=ok)
            for q, g, c, ok in list(zip(questions, golds, completions, correct))[:EXAMPLES_KEPT]
        ],
    )


# --- generation engines ------------------------------------------------------------------------


def _chat_texts(tokenizer: Any, prompts: Sequence[Messages]) -> list[str]:
    return [
        tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]


class HFEngine:
    """transformers `generate`, greedy, left-padded batches; the LoRA switched off for base."""

    name = "hf"

    def __init__(
        self, base: Path, adapter: Path | None, *, dtype: str, batch_size: int, max_new_tokens: int
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        # CPUs without bf16 matrix units run bf16 slower than fp32; a GPU uses the plan's dtype.
        torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)
        if self.device == "cpu":
            torch_dtype = torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(str(base), padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch_dtype).to(self.device)
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
        self, prompts: Sequence[Messages], *, trained: bool, progress: Callable[[int], None]
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
                results.update(zip(batch, decoded))
                progress(len(batch))
        return [results[i] for i in range(len(texts))]


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def sampler_without_flashinfer(environ: MutableMapping[str, str] | None = None) -> bool:
    """Choose vLLM's PyTorch sampler where FlashInfer is not installed; True if it did.

    vLLM 0.24 imports FlashInfer unguarded when it builds its sampler unless
    VLLM_USE_FLASHINFER_SAMPLER is 0 (FlashInfer is one of its requirements, but an install
    without it otherwise fails at engine start: seen on the GPU machine).  Unsloth does the
    same for its own engine.  A value the user set is kept.
    """
    env = os.environ if environ is None else environ
    if importlib.util.find_spec("flashinfer") is not None or "VLLM_USE_FLASHINFER_SAMPLER" in env:
        return False
    env["VLLM_USE_FLASHINFER_SAMPLER"] = "0"
    log.info("FlashInfer is not installed: vLLM samples with PyTorch")
    return True


class VLLMEngine:
    """vLLM offline generation (CUDA), the LoRA served through a LoRARequest."""

    name = "vllm"

    def __init__(
        self, base: Path, adapter: Path | None, *, plan: Plan, max_new_tokens: int
    ) -> None:
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest

        sampler_without_flashinfer()
        training = plan.training
        lora_rank = _adapter_rank(adapter) if adapter is not None else None
        self.llm = LLM(
            model=str(base),
            dtype={"bf16": "bfloat16", "fp16": "float16"}.get(
                training.dtype if training else "", "auto"
            ),
            gpu_memory_utilization=vllm_memory_utilization(training) if training else 0.6,
            enable_lora=adapter is not None,
            max_lora_rank=lora_rank or 16,
            seed=plan.config.train.seed,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.sampling = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        self.lora = LoRARequest("trained", 1, str(adapter)) if adapter is not None else None

    def generate(
        self, prompts: Sequence[Messages], *, trained: bool, progress: Callable[[int], None]
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
        use_workspace_caches(workspace.cache)  # vLLM's compile cache: a second eval starts warm
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
                for s, line in zip(steps, lines)
                if isinstance(line.get(key), (int, float))
            ]
            if points:
                label = (
                    key.removeprefix(REWARD_PREFIX).removesuffix(REWARD_SUFFIX)
                    if key != "reward"
                    else "total"
                )
                ax.plot(*zip(*points), label=label, linewidth=2.5 if key == "reward" else 1.2)
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
    out = [
        "# GSM8K evaluation",
        "",
        f"Model `{s.model}`; {s.rows} GSM8K test rows; greedy, "
        f"at most {s.max_new_tokens} new tokens.",
        "",
    ]
    header = ["metric", *models, *(["change"] if len(models) == 2 else [])]
    out += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for label, field in (
        ("accuracy", "accuracy"),
        ("strict format", "strict_format_rate"),
        ("soft format", "soft_format_rate"),
    ):
        values = [getattr(report.results[m], field) for m in models]
        cells = [_percent(v) for v in values]
        if field == "accuracy":
            cells = [
                f"{c} ({report.results[m].correct}/{report.results[m].rows})"
                for c, m in zip(cells, models)
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
    path: Path, questions: Sequence[str], golds: Sequence[str], completions: Sequence[str]
) -> None:
    rows = [
        {
            "question": q,
            "gold": g,
            "completion": c,
            "extracted": extract_xml_answer(c),
            "correct": correctness(c, g) > 0,
            "strict_format": strict_format(c) > 0,
            "soft_format": soft_format(c) > 0,
        }
        for q, g, c in zip(questions, golds, completions)
    ]
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


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
    system_prompt = recipe_system_prompt(plan)
    rows = load_gsm8k_split(
        split,
        limit=limit or plan.config.eval.eval_limit,
        system_prompt=system_prompt,
        one_shot=plan.config.train.one_shot,  # ask as training asked
    )
    questions, golds, prompts = rows["question"], rows["answer"], rows["prompt"]
    settings = EvalSettings(
        model=plan.config.model,
        dataset_sha256=hashlib.sha256(split.read_bytes()).hexdigest(),
        rows=len(golds),
        max_new_tokens=plan.config.eval.eval_max_new_tokens,
        system_prompt=system_prompt,
        one_shot=plan.config.train.one_shot,
    )
    out_dir = workspace.report
    out_dir.mkdir(parents=True, exist_ok=True)
    results = _previous_results(out_dir / "report.json", settings)
    engine = make()
    for model in which:
        started = time.monotonic()
        with _progress_bar(show_progress, len(prompts), f"eval {model}") as progress:
            completions = engine.generate(prompts, trained=model == "trained", progress=progress)
        results[model] = score(
            model,
            questions,
            golds,
            completions,
            engine=engine.name,
            seconds=time.monotonic() - started,
        )
        _write_completions(out_dir / f"{model}-completions.jsonl", questions, golds, completions)
        log.info(
            "eval %s: accuracy %s on %d rows", model, _percent(results[model].accuracy), len(golds)
        )
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
    return run_eval(
        plan,
        workspace,
        lambda: make_engine(plan, workspace, which),
        which=which,
        limit=limit,
        show_progress=show_progress,
    )
