"""One on-disk form for GSM8K, whichever hub served it: data/gsm8k/{train,test}.parquet.

Hubs lay the same dataset out differently (HF: main/train-00000-of-00001.parquet; mirrors may
ship JSON lines or other shard names), so the splits are found by file name, read with
pyarrow, checked (columns, and row counts where the catalog knows them) and written with just
the columns training and evaluation read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bootstrap.hub.verify import FileRecord, record
from bootstrap.train.data import GSM8K_COLUMNS, validate_gsm8k_columns
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


def _split_of(path: str) -> str | None:
    name = Path(path).name.lower()
    return next((s for s in SPLITS if name.startswith(s)), None)


def _read(path: Path) -> pa.Table:
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet

    if path.suffix == ".parquet":
        return pyarrow.parquet.read_table(path)
    if path.suffix in (".jsonl", ".json"):
        return pyarrow.json.read_json(path)
    return pyarrow.csv.read_csv(path)


def load_splits(
    root: Path, paths: Sequence[str], dataset_id: str, config_name: str | None
) -> dict[str, pa.Table]:
    """Each split's rows (question, answer), checked; DatasetLayoutError if they don't fit."""
    import pyarrow as pa

    tables: dict[str, pa.Table] = {}
    for split in SPLITS:
        shards = sorted(p for p in paths if _split_of(p) == split)
        if not shards:
            raise DatasetLayoutError(f"no {split} split among {sorted(paths)}")
        parts = []
        for shard in shards:
            try:
                table = _read(root / shard)
            except (pa.ArrowException, OSError) as exc:
                raise DatasetLayoutError(f"{shard} cannot be read: {exc}") from exc
            try:
                validate_gsm8k_columns(table.column_names, source=shard)
            except Exception as exc:
                raise DatasetLayoutError(str(exc)) from exc
            parts.append(table.select(list(GSM8K_COLUMNS)))
        tables[split] = pa.concat_tables(parts)
    expected = EXPECTED_ROWS.get((dataset_id, config_name))
    if expected:
        counts = {split: table.num_rows for split, table in tables.items()}
        if counts != expected:
            raise DatasetLayoutError(f"{dataset_id} {config_name}: rows {counts}, expected {expected}")
    return tables


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
