"""A report as plain data, and its markdown rendering: compare builds one Document and renders it
twice, as comparison.md (to_markdown) and as index.html (report/html_report.py).

A section is a title and a list of blocks. A block is a paragraph (a str, with markdown's inline
`code`, **bold** and *emphasis*; a newline in it is a space), a Table (cells are strings), Bullets,
a Heading (within a section), Pre (text shown as it is) or a Figure (a PNG beside the report).

    doc = Document("Title", [Section("", ["Intro."]), Section("Numbers", [Table(["a"], [["1"]])])])
    to_markdown(doc)   # '# Title\\n\\nIntro.\\n\\n## Numbers\\n\\n| a |\\n|---|\\n| 1 |\\n'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from backprop_bench.report import tables


@dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True)
class Bullets:
    items: Sequence[str]


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 3  # the document's title is 1, a section's 2


@dataclass(frozen=True)
class Pre:
    text: str


@dataclass(frozen=True)
class Figure:
    file: str  # a file name in the reports folder
    caption: str


Block = Union[str, Table, Bullets, Heading, Pre, Figure]


@dataclass(frozen=True)
class Section:
    title: str  # "" for the text under the document's title
    blocks: Sequence[Block]


@dataclass(frozen=True)
class Document:
    """title, sections; figures: the plots, listed by the markdown and shown by the HTML;
    headline: sentences the HTML puts first; appendix: sections the HTML adds at the end (other
    stages' reports); facts: the numbers behind the headline."""

    title: str
    sections: Sequence[Section]
    figures: Sequence[Figure] = ()
    headline: Sequence[str] = ()
    appendix: Sequence[Section] = ()
    facts: dict[str, Any] = field(default_factory=dict)


def block_markdown(block: Block) -> str:
    if isinstance(block, str):
        return block
    if isinstance(block, Table):
        return tables.markdown_table(block.header, block.rows)
    if isinstance(block, Bullets):
        return "\n".join(f"- {item}" for item in block.items)
    if isinstance(block, Heading):
        return f"{'#' * block.level} {block.text}"
    if isinstance(block, Pre):
        return f"```\n{block.text}\n```"
    if isinstance(block, Figure):
        return f"![{block.caption}]({block.file})"
    raise TypeError(f"not a report block: {block!r}")


def to_markdown(doc: Document) -> str:
    """The title, each section (## title, then its blocks), then `Plots: a.png, b.png.`; blocks are
    separated by a blank line, and the text ends with one newline."""
    parts = [f"# {doc.title}"]
    for section in doc.sections:
        parts += [f"## {section.title}"] if section.title else []
        parts += [block_markdown(b) for b in section.blocks]
    if doc.figures:
        parts.append(f"Plots: {', '.join(f.file for f in doc.figures)}.")
    return "\n\n".join(parts) + "\n"


def from_markdown(text: str, heading_level: int = 3) -> list[Block]:
    """Blocks from a markdown report of this project (bench.md, stability.md): `#` lines become
    Headings at heading_level and below, `|` lines Tables (the rule line dropped), `- ` lines
    Bullets, fenced code Pre, the rest paragraphs (blank lines separate them)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("#"):
            marks = len(line) - len(line.lstrip("#"))
            blocks.append(Heading(line[marks:].strip(), min(6, heading_level + marks - 1)))
            i += 1
        elif line.startswith("```"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
            blocks.append(Pre("\n".join(lines[i + 1 : end])))
            i = end + 1
        else:
            kind = "|" if line.startswith("|") else "- " if line.startswith("- ") else ""
            j = i + 1
            while j < len(lines) and lines[j].strip() and _kind(lines[j]) == kind:
                j += 1
            blocks.append(_block(kind, lines[i:j]))
            i = j
    return blocks


def _kind(line: str) -> str:
    return "|" if line.startswith("|") else "- " if line.startswith("- ") else "#" if line.startswith("#") else ""


def _block(kind: str, lines: list[str]) -> Block:
    if kind == "- ":
        return Bullets([line[2:] for line in lines])
    if kind == "|":
        cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
        rule = len(cells) > 1 and all(c and set(c) <= set("-:") for c in cells[1])  # |---|---:|
        return Table(cells[0], cells[2:] if rule else cells[1:])
    return "\n".join(lines)
