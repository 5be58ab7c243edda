"""The reports' tables: markdown for the .md reports, CSV (through core/files.py) for the .csv ones.

markdown_table(["batch", "lr"], [[16, "0.1"]], align="lr")   # | batch | lr |\n|---|---:|\n| 16 | 0.1 |
write_csv_table(path, ["framework", "mean"], [{"framework": "numpy", "mean": None}])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from backprop_bench.core.files import write_csv

RULES = {"l": "---", "r": "---:"}  # align letter -> the rule line's cell: l is markdown's default (left)


def markdown_table(
    header: Sequence[object], rows: Iterable[Sequence[object]], align: str = "l", compact_rule: bool = True
) -> str:
    """A markdown table: the header, the rule line, one line per row, joined by "\\n" (no final newline).

    align: a letter per column, or one letter for every column: "l" (---) or "r" (---:).
    compact_rule: the rule line as |---|---:| or, if False, as | --- | ---: |. Both render the same;
    the option keeps each report's bytes as they were before the reports shared this writer.
    Cells are written with str(); "|" in a cell becomes "/" and a newline a space, as either would
    break the table. A row of the wrong length is a ValueError.
    """
    marks = [RULES[a] for a in (align * len(header) if len(align) == 1 else align)]
    if len(marks) != len(header):
        raise ValueError(f"align {align!r} has {len(marks)} letters for {len(header)} columns")
    lines = [_row(header), "|" + "|".join(marks) + "|" if compact_rule else _row(marks)]
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"row {i} has {len(row)} cells, the header {len(header)}: {row!r}")
        lines.append(_row(row))
    return "\n".join(lines)


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in cells) + " |"


def csv_cells(columns: Sequence[str], records: Iterable[Mapping[str, object]]) -> list[list[object]]:
    """Each record's values in column order; an absent key, None and NaN as "" (an empty cell)."""
    return [["" if r.get(c) is None or r[c] != r[c] else r[c] for c in columns] for r in records]  # x != x: NaN


def write_csv_table(path: str | Path, columns: Sequence[str], records: Iterable[Mapping[str, object]]) -> Path:
    """A CSV of the header `columns` and one line per record (csv_cells), written atomically."""
    return write_csv(path, columns, csv_cells(columns, records))
