"""Order the mirrors for this machine: region first, then what the probes saw.

cn: ModelScope, hf-mirror, Hugging Face.  global: Hugging Face, then the others.  Extra mirrors
the user configured (a company proxy) come first.  A mirror whose probe failed moves to the end
but stays in the list: probes are short and a flaky first answer is not a verdict.
"""

from __future__ import annotations

from collections.abc import Sequence

from bootstrap.config import HF_MIRROR, HUGGINGFACE, MODELSCOPE, JobConfig, is_local_path
from bootstrap.detect.region import HubProbe, Region
from bootstrap.planning.sources import Artefact, Mirror, RepoType, Source, artefact, builtin_mirrors

REGION_ORDER: dict[str, tuple[str, ...]] = {
    "cn": (MODELSCOPE, HF_MIRROR, HUGGINGFACE),
    "global": (HUGGINGFACE, HF_MIRROR, MODELSCOPE),
}


def order_mirrors(
    mirrors: Sequence[Mirror], region: Region, probes: Sequence[HubProbe], forced: str = "auto"
) -> list[tuple[Mirror, str]]:
    """Mirrors in the order fetch should try them, each with the reason for its place."""
    if forced != "auto":
        chosen = [m for m in mirrors if m.name == forced]
        return [(m, "forced by --mirror") for m in chosen]
    rank = {name: i for i, name in enumerate(REGION_ORDER[region])}
    failed = {p.name: p.error or "no answer" for p in probes if not p.ok}
    latency = {p.name: p.latency_ms for p in probes if p.ok}

    def key(item: tuple[int, Mirror]) -> tuple[int, int, int]:
        position, mirror = item
        user_first = 0 if mirror.name not in rank else 1
        return (mirror.name in failed, user_first, rank.get(mirror.name, position))

    ordered = [m for _, m in sorted(enumerate(mirrors), key=key)]
    reasons = []
    for mirror in ordered:
        if mirror.name in failed:
            why = f"probe failed ({failed[mirror.name]}): tried last"
        elif mirror.name not in rank:
            why = "extra mirror from config: tried first"
        else:
            why = f"{region} order"
            if mirror.name in latency:
                why += f", answered in {latency[mirror.name]:.0f} ms"
        reasons.append((mirror, why))
    return reasons


def sources_for(
    config: JobConfig, repo_type: RepoType, region: Region, probes: Sequence[HubProbe]
) -> list[Source]:
    """The ordered attempts for the job's model or dataset; a local dataset is its own source."""
    if repo_type == "dataset" and is_local_path(config.dataset):
        return [Source(mirror="local", kind="local", endpoint=f"file://{config.dataset}",
                       repo_id=config.dataset, repo_type="dataset", revision=None,
                       reason="a local file or directory")]  # fmt: skip
    art = artefact(config, repo_type)
    ordered = order_mirrors(builtin_mirrors(config), region, probes, config.mirror)
    return [_source(art, mirror, why) for mirror, why in ordered]


def _source(art: Artefact, mirror: Mirror, reason: str) -> Source:
    modelscope = mirror.kind == "modelscope"
    return Source(
        mirror=mirror.name,
        kind=mirror.kind,
        endpoint=mirror.endpoint,
        repo_id=art.modelscope_id if modelscope else art.hf_id,
        repo_type=art.repo_type,
        revision=art.modelscope_revision if modelscope else art.hf_revision,
        reason=reason,
    )
