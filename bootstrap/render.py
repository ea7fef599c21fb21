"""Human renderings (rich, on stderr-free stdout) of what the library returns."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from bootstrap.detect import Detection
from bootstrap.plan import Plan
from bootstrap.train.backends import vllm_share

if TYPE_CHECKING:
    from bootstrap.evaluate import EvalReport
    from bootstrap.export.manifest import ExportManifest
    from bootstrap.hub.fetch import Manifest
    from bootstrap.pipeline import RunSummary, StageOutcome
    from bootstrap.train.grpo import TrainResult

console = Console()


def _yes(flag: bool | None) -> str:
    return "[green]yes[/]" if flag else "[red]no[/]"


def _region_table(detection: Detection) -> Table:
    region = detection.region
    table = Table(title=f"Region: [bold]{region.region}[/] (decided by {region.decided_by})")
    table.add_column("evidence")
    table.add_column("points to")
    table.add_column("detail")
    for ev in region.evidence:
        table.add_row(ev.source, ev.points_to or "-", ev.detail)
    for probe in region.probes:
        state = f"{probe.latency_ms:.0f} ms" if probe.ok and probe.latency_ms is not None else probe.error or "failed"
        table.add_row(f"probe {probe.name}", "-", f"{probe.endpoint}: {state}")
    return table


def _gpu_table(detection: Detection) -> Table:
    report = detection.gpus
    title = f"GPUs (driver {report.driver_version or '-'}, CUDA {report.cuda_version or '-'})"
    table = Table(title=title)
    for column in ("#", "name", "memory", "compute", "bf16"):
        table.add_column(column)
    for gpu in report.gpus:
        table.add_row(
            str(gpu.index), gpu.name, f"{gpu.memory_mib / 1024:.1f} GiB",
            gpu.compute_capability or "-", _yes(gpu.bf16),
        )  # fmt: skip
    if not report.gpus:
        table.add_row("-", f"none: {report.reason or 'no GPU found'}", "", "", "")
    return table


def _system_table(detection: Detection) -> Table:
    system = detection.system
    table = Table(title="System", show_header=False)
    table.add_row("os / python", f"{system.os} / {system.python}")
    table.add_row("cpus / ram", f"{system.cpu_count} / {system.ram_available_gib:.1f} of {system.ram_total_gib:.1f} GiB free")
    table.add_row("disk", f"{system.disk_free_gib:.1f} of {system.disk_total_gib:.1f} GiB free at {system.disk_path}")
    table.add_row("cuda toolkit", system.cuda_toolkit or "-")
    installed = ", ".join(f"{k} {v}" for k, v in system.packages.items() if v)
    table.add_row("packages", installed or "-")
    return table


def detection(result: Detection) -> None:
    for table in (_region_table(result), _gpu_table(result), _system_table(result)):
        console.print(table)


def plan(result: Plan) -> None:
    console.print(_region_table(result.detection))
    console.print(_gpu_table(result.detection))
    for title, sources in (("Model", result.model_sources), ("Dataset", result.dataset_sources)):
        table = Table(title=f"{title} sources, in order")
        for column in ("mirror", "endpoint", "repo", "revision", "why"):
            table.add_column(column)
        for src in sources:
            table.add_row(src.mirror, src.endpoint, src.repo_id, src.revision or "main", src.reason)
        console.print(table)
    summary = Table(title="Training", show_header=False)
    summary.add_row("backend", f"{result.backend.name} ({result.backend.generation} generation): {result.backend.reason}")
    if result.profile and result.training:
        t = result.training
        summary.add_row("profile", f"{result.profile.profile.name}: {result.profile.reason}")
        summary.add_row("precision", f"{t.dtype}, 4-bit {_yes(t.load_in_4bit)}, LoRA r={t.lora_rank} alpha={t.lora_alpha}")
        summary.add_row("generations", f"{t.num_generations} x {t.max_completion_length} tokens (prompt {t.max_prompt_length}, seq {t.max_seq_length})")
        summary.add_row("steps", f"{t.max_steps} (checkpoint every {t.save_steps}), lr {t.learning_rate:g}")
        if result.backend.generation == "vllm" or t.gpu_memory_limit_gib:
            budget = f"{t.gpu_memory_limit_gib:g} GiB (gpu_memory_limit_gib)" if t.gpu_memory_limit_gib else "the whole GPU"
            share = f"; vLLM takes {vllm_share(t):g} of it" if result.backend.generation == "vllm" else ""
            summary.add_row("GPU memory", budget + share)
        if result.launch:
            _launch_rows(summary, result)
    else:
        summary.add_row("profile", f"[red]cannot train here[/]: {result.refusal}")
    summary.add_row("export", ", ".join(result.export_formats))
    summary.add_row("workspace", str(result.config.workspace))
    console.print(summary)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")


def _launch_rows(summary: Table, result: Plan) -> None:
    launch, t = result.launch, result.training
    assert launch is not None and t is not None
    where = f"GPU {', '.join(launch.training_devices)}" if launch.training_devices else "CPU"
    summary.add_row("processes", f"{launch.processes} ({launch.strategy_label}) on {where}: {launch.reason}")
    batch = t.per_device_train_batch_size * t.gradient_accumulation_steps * launch.processes
    summary.add_row("generation batch", f"{t.per_device_train_batch_size} per device x "
                    f"{t.gradient_accumulation_steps} accumulation x {launch.processes} = {batch} completions/step")
    if launch.generation_device is not None:
        summary.add_row("generation", f"TRL's vLLM server on GPU {launch.generation_device}")
    if launch.command:
        summary.add_row("launch", " ".join(launch.command))


def manifest(result: Manifest) -> None:
    table = Table(title="Fetched")
    for column in ("what", "repo", "mirror", "revision", "files", "size", "where"):
        table.add_column(column)
    for record in (result.model, result.dataset):
        if record is None:
            continue
        size = sum(f.size for f in record.files) / 2**20
        table.add_row(
            record.kind, record.repo_id, record.mirror, record.revision[:12],
            str(len(record.files)), f"{size:.1f} MiB", record.path,
        )  # fmt: skip
        for failed in record.failed_mirrors:
            console.print(f"[yellow]{record.kind}: {failed.mirror} failed[/] ({failed.error}, {failed.attempts} attempt(s))")
    console.print(table)


def training(result: TrainResult) -> None:
    table = Table(title="Training", show_header=False)
    if result.already_done:
        table.add_row("state", f"already finished at step {result.steps}; nothing trained")
    else:
        resumed = f" (resumed from {result.resumed_from.name})" if result.resumed_from else ""
        table.add_row("steps", f"{result.steps} of {result.max_steps}{resumed} in {result.seconds:.0f} s")
    table.add_row("backend", f"{result.backend} ({result.generation} generation): {result.backend_reason}")
    table.add_row("lora", str(result.lora))
    table.add_row("metrics", str(result.metrics))
    table.add_row("samples", str(result.samples) if result.samples else "-")
    console.print(table)


def stage(outcome: StageOutcome) -> None:
    """One line as each stage ends, on stderr so the summary stays the only stdout."""
    took = f" in {outcome.seconds:.0f} s" if outcome.status == "ran" else ""
    Console(stderr=True).print(f"[bold]{outcome.name}[/]: {outcome.status}{took}")


def _accuracy(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def run_summary(summary: RunSummary) -> None:
    table = Table(title=f"grpo-bootstrap run: {summary.workspace}")
    for column in ("stage", "status", "seconds"):
        table.add_column(column)
    for outcome in summary.stages:
        table.add_row(outcome.name, outcome.status, f"{outcome.seconds:.0f}")
    console.print(table)
    console.print(
        f"GSM8K accuracy: before {_accuracy(summary.accuracy_before)}, "
        f"after {_accuracy(summary.accuracy_after)}"
    )
    where = Table(show_header=False, title="Where everything is")
    for name, path in summary.paths.items():
        where.add_row(name, path)
    console.print(where)


def evaluation(report: EvalReport) -> None:
    table = Table(title=f"GSM8K test, {report.settings.rows} rows")
    for column in ("model", "accuracy", "strict format", "soft format", "engine", "seconds"):
        table.add_column(column)
    for name, scores in report.results.items():
        table.add_row(
            name, _accuracy(scores.accuracy), _accuracy(scores.strict_format_rate),
            _accuracy(scores.soft_format_rate), scores.engine, f"{scores.seconds:.0f}",
        )  # fmt: skip
    console.print(table)


def exports(manifest: ExportManifest) -> None:
    table = Table(title=f"Exports of {manifest.base_model} + LoRA")
    for column in ("format", "path", "files", "size"):
        table.add_column(column)
    for fmt, artefact in manifest.artefacts.items():
        size = sum(f.size for f in artefact.files) / 2**20
        table.add_row(fmt, artefact.path, str(len(artefact.files)), f"{size:.1f} MiB")
    console.print(table)
