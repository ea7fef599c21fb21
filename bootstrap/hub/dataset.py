"""One on-disk form for the task's dataset, whichever hub (or local file) served it:
data/task/{train,test}.parquet (task/dataset.py says what they hold).

Hubs lay the same dataset out differently (HF: main/train-00000-of-00001.parquet; mirrors may
ship JSON lines or other shard names), so the splits are found by file name, read with
pyarrow, checked (the mapped columns, and row counts where the catalog knows them) and written
in the one form.  A dataset without a test split gives `eval_fraction` of its rows to the
evaluation, the same rows on every run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bootstrap.errors import ConfigError
from bootstrap.hub.verify import FileRecord, record
from bootstrap.task.dataset import READABLE, Columns, hold_out, normalize, read_table
from bootstrap.workspace import Workspace, atomic_file

if TYPE_CHECKING:
    import pyarrow as pa

SPLITS = ("train", "test")
# The published sizes of GSM8K "main": a mirror serving other counts is serving something else.
EXPECTED_ROWS: dict[tuple[str, str | None], dict[str, int]] = {
    ("openai/gsm8k", "main"): {"train": 7473, "test": 1319},
}


class DatasetLayoutError(Exception):
    """The files are intact but are not the dataset we want; another mirror may do better."""


def _of_split(paths: Sequence[str], split: str) -> list[str]:
    """The files of one split: those whose name starts with it (train*, test*)."""
    return sorted(p for p in paths if Path(p).name.lower().startswith(split))


def _concat(root: Path, shards: Sequence[str], columns: Columns) -> pa.Table:
    import pyarrow as pa

    parts = []
    for shard in shards:
        try:
            parts.append(normalize(read_table(root / shard), columns, source=shard))
        except ConfigError as exc:  # unreadable, or without the mapped columns
            raise DatasetLayoutError(exc.message) from exc
    return pa.concat_tables(parts, promote_options="default")


def load_splits(
    root: Path,
    paths: Sequence[str],
    dataset_id: str,
    config_name: str | None,
    columns: Columns,
    *,
    eval_fraction: float,
    seed: int,
) -> dict[str, pa.Table]:
    """Each split's rows in the one form; DatasetLayoutError if the files don't fit."""
    train = _of_split(paths, "train")
    if not train:
        raise DatasetLayoutError(f"no train split among {sorted(paths)}")
    tables = {"train": _concat(root, train, columns)}
    test = _of_split(paths, "test")
    if test:
        tables["test"] = _concat(root, test, columns)
    else:
        tables["train"], tables["test"] = hold_out(tables["train"], eval_fraction, seed)
    expected = EXPECTED_ROWS.get((dataset_id, config_name))
    if expected:
        counts = {split: table.num_rows for split, table in tables.items()}
        if counts != expected:
            raise DatasetLayoutError(
                f"{dataset_id} {config_name}: rows {counts}, expected {expected}"
            )
    return tables


def local_files(path: Path) -> list[Path]:
    """The readable files of a local dataset: the file itself, or a directory's (by split)."""
    if path.is_file():
        if path.suffix not in READABLE:
            raise ConfigError(
                f"dataset {path}: not a {'/'.join(READABLE)} file",
                hint="convert it, or point dataset at a directory of train*/test* files",
            )
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in READABLE)
        if found:
            return found
        raise ConfigError(f"dataset {path}: no {'/'.join(READABLE)} file in it")
    raise ConfigError(f"dataset {path} does not exist", hint="check the path (--set dataset=...)")


def local_splits(
    path: Path, columns: Columns, *, eval_fraction: float, seed: int
) -> tuple[dict[str, pa.Table], list[Path]]:
    """A local dataset's splits in the one form, and the files they came from.  A directory's
    files go by name (train*, test*); a single file, whatever its name, is the train split."""
    files = local_files(path)
    if path.is_file():
        train = normalize(read_table(path), columns, source=str(path))
        return dict(zip(SPLITS, hold_out(train, eval_fraction, seed), strict=True)), files
    names = [f.relative_to(path).as_posix() for f in files]
    try:
        tables = load_splits(path, names, str(path), None, columns, eval_fraction=eval_fraction,
                             seed=seed)  # fmt: skip
    except DatasetLayoutError as exc:
        raise ConfigError(f"dataset {path}: {exc}") from None
    return tables, files


def write_splits(tables: dict[str, pa.Table], workspace: Workspace) -> list[FileRecord]:
    """Write each split atomically and return their records."""
    import pyarrow.parquet

    outputs = []
    for split, table in tables.items():
        final = workspace.split_path(split)
        with atomic_file(final) as tmp:
            pyarrow.parquet.write_table(table, tmp)
        outputs.append(record(final, str(final.relative_to(workspace.root))))
    return outputs
