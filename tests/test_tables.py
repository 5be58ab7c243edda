"""report/tables.py: the markdown and CSV tables every report writes (comparison, stability, bench)."""

from __future__ import annotations

import math

import pytest

from backprop_bench.report.tables import csv_cells, markdown_table, write_csv_table


def test_a_markdown_table_is_header_rule_and_rows_without_a_final_newline():
    table = markdown_table(["a", "b"], [["1", 2], [3.5, None]])
    assert table == "| a | b |\n|---|---|\n| 1 | 2 |\n| 3.5 | None |"
    assert markdown_table(["a"], []) == "| a |\n|---|"


def test_alignment_per_column_or_for_all_and_the_spaced_rule():
    assert markdown_table(["a", "b", "c"], [], align="lrr").splitlines()[1] == "|---|---:|---:|"
    assert markdown_table(["a", "b"], [], align="r").splitlines()[1] == "|---:|---:|"
    assert markdown_table(["a", "b"], [], align="r", compact_rule=False).splitlines()[1] == "| ---: | ---: |"
    with pytest.raises(ValueError, match="align 'lr' has 2 letters for 3 columns"):
        markdown_table(["a", "b", "c"], [], align="lr")


def test_a_pipe_or_a_newline_in_a_cell_cannot_break_the_table():
    assert markdown_table(["note"], [["no | GPU\nhere"]]).splitlines()[2] == "| no / GPU here |"
    assert markdown_table(["", "x"], [["", ""]]).splitlines()[2] == "|  |  |"  # empty cells keep their column


def test_a_row_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="row 1 has 1 cells, the header 2"):
        markdown_table(["a", "b"], [["1", "2"], ["3"]])


def test_csv_cells_put_the_columns_in_order_and_leave_none_and_nan_empty():
    records = [{"b": 2, "a": "x", "extra": 9}, {"a": None, "b": math.nan}, {"b": 0}]
    assert csv_cells(["a", "b"], records) == [["x", 2], ["", ""], ["", 0]]  # 0 stays 0


def test_write_csv_table(tmp_path):
    path = write_csv_table(
        tmp_path / "t" / "table.csv", ["name", "mean"], [{"name": "a,b", "mean": 0.5}, {"name": "c"}]
    )
    assert path.read_text() == 'name,mean\n"a,b",0.5\nc,\n'
