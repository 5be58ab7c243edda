"""report/document.py: a report as data, rendered as markdown, and read back from markdown."""

from __future__ import annotations

import pytest

from backprop_bench.report.document import (
    Bullets,
    Document,
    Figure,
    Heading,
    Pre,
    Section,
    Table,
    block_markdown,
    from_markdown,
    to_markdown,
)


def test_to_markdown_separates_blocks_by_a_blank_line():
    doc = Document(
        "Title",
        [
            Section("", ["1 run.", "**Bold** text\nover two lines."]),
            Section("Numbers", [Table(["a", "b"], [["1", "x|y"]]), Bullets(["one", "two"]), "After."]),
        ],
        figures=[Figure("a.png", "A."), Figure("b.png", "B.")],
        headline=["Not in the markdown."],
        appendix=[Section("Appendix", ["Nor this."])],
    )
    assert to_markdown(doc) == (
        "# Title\n\n1 run.\n\n**Bold** text\nover two lines.\n\n## Numbers\n\n"
        "| a | b |\n|---|---|\n| 1 | x/y |\n\n- one\n- two\n\nAfter.\n\nPlots: a.png, b.png.\n"
    )


def test_every_block_kind_has_a_markdown_form():
    assert block_markdown(Heading("Sub", 4)) == "#### Sub"
    assert block_markdown(Pre("a  b")) == "```\na  b\n```"
    assert block_markdown(Figure("f.png", "cap")) == "![cap](f.png)"
    with pytest.raises(TypeError, match="not a report block"):
        block_markdown(3)  # type: ignore[arg-type]


def test_from_markdown_reads_a_report_back_into_blocks():
    text = (
        "# Bench\n\nMachine: x,\nsecond line.\n\n## Cells\n\n"
        "| cell | s |\n|---|---:|\n| numpy | 1.0 |\n| torch |  |\n\n"
        "- goal: **met**\n- other\n\n```\nraw  text\n```\nTail.\n"
    )
    assert from_markdown(text) == [
        Heading("Bench", 3),
        "Machine: x,\nsecond line.",
        Heading("Cells", 4),
        Table(["cell", "s"], [["numpy", "1.0"], ["torch", ""]]),
        Bullets(["goal: **met**", "other"]),
        Pre("raw  text"),
        "Tail.",
    ]
    table = Table(["a", "b"], [["1", "2"]])
    assert from_markdown(block_markdown(table)) == [table]
