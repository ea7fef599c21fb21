"""Human renderings (rich, on stderr-free stdout) of what the library returns."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from bootstrap.detect import Detection
from bootstrap.planning.plan import Plan
from bootstrap.train.backends import vllm_share

if TYPE_CHECKING:
    from pathlib import Path

    from bootstrap.evaluate import EvalReport
    from bootstrap.export.manifest import ExportManifest
    from bootstrap.hub.fetch import Manifest
    from bootstrap.pipeline import RunSummary, StageOutcome, Verification
    from bootstrap.train.grpo import TrainResult
    from bootstrap.train.metrics import RewardCurve

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
        state = (
            f"{probe.latency_ms:.0f} ms"
            if probe.ok and probe.latency_ms is not None
            else probe.error or "failed"
        )
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


def _cuda_line(detection: Detection) -> str | None:
    """The CUDA torch needs against the driver's, below the GPU table."""
    cuda = detection.cuda
    if cuda.needs is None:
        return None
    fit = "no driver to check it against"
    if cuda.fits is not None:
        fit = "[green]the driver runs it[/]" if cuda.fits else "[red]the driver is too old[/]"
    image = f" (image {cuda.image_variant})" if cuda.image_variant else ""
    return f"CUDA: torch needs {cuda.needs}{image}, {fit}"


def _system_table(detection: Detection) -> Table:
    system = detection.system
    table = Table(title="System", show_header=False)
    table.add_row("os / python", f"{system.os} / {system.python}")
    table.add_row(
        "cpus / ram",
        f"{system.cpu_count} / {system.ram_available_gib:.1f} of {system.ram_total_gib:.1f} GiB free",
    )
    table.add_row(
        "disk",
        f"{system.disk_free_gib:.1f} of {system.disk_total_gib:.1f} GiB free at {system.disk_path}",
    )
    table.add_row("cuda toolkit", system.cuda_toolkit or "-")
    installed = ", ".join(f"{k} {v}" for k, v in system.packages.items() if v)
    table.add_row("packages", installed or "-")
    return table


def detection(result: Detection) -> None:
    console.print(_region_table(result))
    console.print(_gpu_table(result))
    if line := _cuda_line(result):
        console.print(line)
    if result.cuda.advice:
        console.print(f"[{'yellow' if result.cuda.fits else 'red'}]CUDA:[/] {result.cuda.advice}")
    console.print(_system_table(result))


def plan(result: Plan) -> None:
    console.print(_region_table(result.detection))
    console.print(_gpu_table(result.detection))
    if line := _cuda_line(result.detection):
        console.print(line)
    for title, sources in (("Model", result.model_sources), ("Dataset", result.dataset_sources)):
        table = Table(title=f"{title} sources, in order")
        for column in ("mirror", "endpoint", "repo", "revision", "why"):
            table.add_column(column)
        for src in sources:
            table.add_row(src.mirror, src.endpoint, src.repo_id, src.revision or "main", src.reason)
        console.print(table)
    summary = Table(title="Training", show_header=False)
    summary.add_row(
        "backend",
        f"{result.backend.name} ({result.backend.generation} generation): {result.backend.reason}",
    )
    if result.profile and result.training:
        t = result.training
        summary.add_row("profile", f"{result.profile.profile.name}: {result.profile.reason}")
        summary.add_row(
            "precision",
            f"{t.dtype}, 4-bit {_yes(t.load_in_4bit)}, LoRA r={t.lora_rank} alpha={t.lora_alpha}",
        )
        summary.add_row(
            "generations",
            f"{t.num_generations} x {t.max_completion_length} tokens (prompt {t.max_prompt_length}, seq {t.max_seq_length})",
        )
        summary.add_row(
            "steps", f"{t.max_steps} (checkpoint every {t.save_steps}), lr {t.learning_rate:g}"
        )
        trackers = ", ".join(t.report_to) or "none"
        summary.add_row("tracking", f"metrics.jsonl; report_to {trackers} (in tracking/)")
        if result.backend.generation == "vllm" or t.gpu_memory_limit_gib:
            budget = (
                f"{t.gpu_memory_limit_gib:g} GiB (gpu_memory_limit_gib)"
                if t.gpu_memory_limit_gib
                else "the whole GPU"
            )
            share = (
                f"; vLLM takes {vllm_share(t):g} of it"
                if result.backend.generation == "vllm"
                else ""
            )
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
    summary.add_row(
        "processes", f"{launch.processes} ({launch.strategy_label}) on {where}: {launch.reason}"
    )
    batch = t.per_device_train_batch_size * t.gradient_accumulation_steps * launch.processes
    summary.add_row(
        "generation batch",
        f"{t.per_device_train_batch_size} per device x "
        f"{t.gradient_accumulation_steps} accumulation x {launch.processes} = {batch} completions/step",
    )
    if launch.generation_device is not None:
        summary.add_row("generation", f"TRL's vLLM server on GPU {launch.generation_device}")
    if launch.command:
        summary.add_row("launch", " ".join(launch.command))


def manifest(result: Manifest, workspace: Path) -> None:
    """The fetched artifacts; `where` is absolute, so it can be copied from any directory (the
    manifest itself keeps paths relative to the workspace)."""
    table = Table(title="Fetched")
    for column in ("what", "repo", "mirror", "revision", "files", "size", "seconds", "where"):
        table.add_column(column, no_wrap=column in ("repo", "where"))
    for record in (result.model, result.dataset):
        if record is None:
            continue
        size = sum(f.size for f in record.files) / 2**20
        table.add_row(
            record.kind, record.repo_id, record.mirror, record.revision[:12],
            str(len(record.files)), f"{size:.1f} MiB", f"{record.seconds:.1f}", str(workspace / record.path),
        )  # fmt: skip
        for failed in record.failed_mirrors:
            console.print(
                f"[yellow]{record.kind}: {failed.mirror} failed[/] ({failed.error}, {failed.attempts} attempt(s))"
            )
    _print_whole(table)


def _print_whole(table: Table) -> None:
    """Print `table` at its natural width even past the console's (80 columns when stdout is
    not a terminal): a repo id or a path cut short cannot be copied."""
    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
    if natural <= console.width:
        console.print(table)
    else:  # rich never prints wider than its console: a wider one, on the same stream
        Console(file=console.file, width=natural, force_terminal=console.is_terminal).print(table)


def training(result: TrainResult) -> None:
    table = Table(title="Training", show_header=False)
    if result.already_done:
        table.add_row("state", f"already finished at step {result.steps}; nothing trained")
    else:
        resumed = f" (resumed from {result.resumed_from.name})" if result.resumed_from else ""
        table.add_row(
            "steps", f"{result.steps} of {result.max_steps}{resumed} in {result.seconds:.0f} s"
        )
    table.add_row(
        "backend", f"{result.backend} ({result.generation} generation): {result.backend_reason}"
    )
    table.add_row("lora", str(result.lora))
    table.add_row("metrics", str(result.metrics))
    table.add_row("samples", str(result.samples) if result.samples else "-")
    console.print(table)


def run_start(result: Plan) -> None:
    """Before `run` starts: the profile and the generation engine it will train with, on stderr."""
    err = Console(stderr=True)
    if result.profile and result.training:
        t = result.training
        err.print(f"[bold]profile[/] {result.profile.profile.name} ({result.profile.reason}): "
                  f"{t.num_generations} generations x {t.max_completion_length} tokens, "
                  f"{t.max_steps} steps", soft_wrap=True)  # fmt: skip
    engine = "vLLM" if result.backend.generation == "vllm" else "HF generate"
    err.print(f"[bold]generation[/] {engine}, backend {result.backend.name}: "
              f"{result.backend.reason}", soft_wrap=True)  # fmt: skip


def stage(outcome: StageOutcome) -> None:
    """One line as each stage ends, on stderr so the summary stays the only stdout."""
    took = f" in {outcome.seconds:.0f} s" if outcome.status == "ran" else ""
    Console(stderr=True).print(f"[bold]{outcome.name}[/]: {outcome.status}{took}")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def reward_curve(curve: RewardCurve) -> str:
    """One line: the mean total reward of the first and the last steps of training."""
    return (
        f"Mean reward: first {curve.window} steps {curve.first:.3f} → "
        f"last {curve.window} steps {curve.last:.3f} (of {curve.steps} steps)"
    )


def run_summary(summary: RunSummary) -> None:
    table = Table(title=f"grpo-bootstrap run: {summary.workspace}")
    for column in ("stage", "status", "seconds"):
        table.add_column(column)
    for outcome in summary.stages:
        table.add_row(outcome.name, outcome.status, f"{outcome.seconds:.0f}")
    console.print(table)
    console.print(
        f"Accuracy on the test split: before {_percent(summary.accuracy_before)}, "
        f"after {_percent(summary.accuracy_after)}"
    )
    console.print(
        f"Strict XML format on the test split: before {_percent(summary.strict_format_before)}, "
        f"after {_percent(summary.strict_format_after)}"
    )
    if summary.reward_curve is not None:
        console.print(reward_curve(summary.reward_curve))
    where = Table(show_header=False, title="Where everything is")
    for name, path in summary.paths.items():
        where.add_row(name, path)
    console.print(where)


def evaluation(report: EvalReport) -> None:
    s = report.settings
    table = Table(
        title=f"Test split, {s.rows} rows ({s.protocol} prompt; accuracy: {s.eval_reward})"
    )
    columns = ("model", "accuracy", "strict format", "soft format", "lm-eval strict", "lm-eval flexible",
               "engine", "seconds")  # fmt: skip
    for column in columns:
        table.add_column(column)
    for name, scores in report.results.items():
        table.add_row(
            name, _percent(scores.accuracy), _percent(scores.strict_format_rate),
            _percent(scores.soft_format_rate), _percent(scores.strict_match_accuracy),
            _percent(scores.flexible_extract_accuracy), scores.engine, f"{scores.seconds:.0f}",
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


def verification(report: Verification) -> None:
    table = Table(title=f"Outputs of the finished stages in {report.workspace}")
    for column in ("stage", "files", "state"):
        table.add_column(column)
    for stage in report.stages:
        if stage.problems:
            state = "[red]" + "\n".join(stage.problems) + "[/]"
        else:
            state = "[green]as written[/]" if stage.files else "no outputs recorded (an older run)"
        table.add_row(stage.name, str(stage.files), state)
    if not report.stages:
        table.add_row("-", "0", "no stage has finished yet")
    console.print(table)
