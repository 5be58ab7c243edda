"""index.html: a Document (report/document.py) as one self-contained page.

    page = render(doc, reports_dir)   # a str: headline, contents, every section, then the appendix

Nothing is fetched: the CSS is inline and each Figure's PNG (read from reports_dir) becomes a
data: URI, so the page reads the same offline, mailed or opened from an artifact store. Nothing
is said by colour alone: tables carry their words and numbers, verdicts are sentences.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from backprop_bench.report.document import Block, Bullets, Document, Figure, Heading, Pre, Section, Table

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 72rem; margin: 1.5rem auto; padding: 0 1rem;
       color: rgb(17, 17, 17); }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid rgb(153, 153, 153); }
.headline { border: 2px solid rgb(51, 51, 51); padding: 0.6rem 1.2rem; }
.headline li { margin: 0.3rem 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.6rem 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid rgb(136, 136, 136); padding: 0.2rem 0.5rem; text-align: left; vertical-align: top; }
td { white-space: nowrap; } td:last-child { white-space: normal; }  /* a note or verdict wraps, numbers do not */
th { background: rgb(238, 238, 238); }
tbody tr:nth-child(even) { background: rgb(246, 246, 246); }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid rgb(204, 204, 204); }
figcaption { font-style: italic; }
code, pre { font-family: ui-monospace, monospace; font-size: 0.9em; }
pre { background: rgb(244, 244, 244); padding: 0.6rem; overflow-x: auto; }
"""


def inline(text: str) -> str:
    """Escaped text with markdown's `code`, **bold** and *emphasis* as tags."""
    out = []
    for i, part in enumerate(re.split(r"`([^`]*)`", text)):  # odd parts were inside backticks
        part = html.escape(part)
        if i % 2:
            out.append(f"<code>{part}</code>")
            continue
        part = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", part)
        out.append(re.sub(r"(?<![\w*])\*(\S(?:.*?\S)?)\*(?![\w*])", r"<em>\1</em>", part))
    return "".join(out)


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def figure_html(figure: Figure, images_dir: Path) -> str:
    caption = f"<figcaption>{inline(figure.caption)}</figcaption>"
    path = images_dir / figure.file
    if not path.is_file():
        return f"<figure><p>{html.escape(figure.file)}: not written.</p>{caption}</figure>"
    alt = html.escape(figure.caption, quote=True)
    return f'<figure><img src="{data_uri(path)}" alt="{alt}">{caption}</figure>'


def table_html(table: Table) -> str:
    head = "".join(f'<th scope="col">{inline(h)}</th>' for h in table.header)
    body = "".join("<tr>" + "".join(f"<td>{inline(str(c))}</td>" for c in row) + "</tr>" for row in table.rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def block_html(block: Block, images_dir: Path) -> str:
    if isinstance(block, str):
        return f"<p>{inline(block)}</p>"
    if isinstance(block, Table):
        return table_html(block)
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{inline(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, Heading):
        level = min(6, max(3, block.level))
        return f"<h{level}>{inline(block.text)}</h{level}>"
    if isinstance(block, Pre):
        return f"<pre>{html.escape(block.text)}</pre>"
    if isinstance(block, Figure):
        return figure_html(block, images_dir)
    raise TypeError(f"not a report block: {block!r}")


def section_html(section: Section, images_dir: Path) -> str:
    title = f'<h2 id="{slug(section.title)}">{inline(section.title)}</h2>' if section.title else ""
    return "<section>" + title + "\n".join(block_html(b, images_dir) for b in section.blocks) + "</section>"


def render(doc: Document, images_dir: Path) -> str:
    """The page: title, the headline (its sentences as a list), contents, the sections, the
    figures with their captions, then the appendix; images_dir holds the figures' PNGs."""
    plots = Section("Plots", list(doc.figures)) if doc.figures else None
    sections = [*doc.sections, *([plots] if plots else []), *doc.appendix]
    titled = [s.title for s in sections if s.title]
    contents = "".join(f'<li><a href="#{slug(t)}">{inline(t)}</a></li>' for t in titled)
    headline = "".join(f"<li>{inline(s)}</li>" for s in doc.headline)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(doc.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{inline(doc.title)}</h1>",
        f'<section class="headline" id="headline"><h2>Headline</h2><ul>{headline}</ul></section>' if headline else "",
        f'<nav><h2 id="contents">Contents</h2><ol>{contents}</ol></nav>',
        *(section_html(s, images_dir) for s in sections),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"
