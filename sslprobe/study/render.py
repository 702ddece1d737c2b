"""The report as blocks, and the two ways it is written: Markdown for a repository, one HTML file for a browser.

Both renderings walk the same list of blocks (document.py builds it), so report.md and report.html
say the same things. The HTML page is self-contained: styles inline, every figure a base64 PNG in
a ``data:`` URI, no script and no link outside the file, so it opens offline and can be mailed.
"""
from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str
    strong: bool = False


@dataclass(frozen=True)
class Items:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Figure:
    path: Path  # a PNG under the study's figures/ folder
    caption: str
    width: int = 640  # CSS pixels in the HTML page (at most the page's width)


@dataclass(frozen=True)
class Code:
    text: str


Block = Heading | Para | Items | Table | Figure | Code
_NUMBER = re.compile(r"^([-+−]?\d|—$|nan$)")  # numbers (and their blanks) align right, words left


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(blocks: Sequence[Block], *, base: Path) -> str:
    """GitHub-flavoured Markdown; figures are linked relative to ``base`` (the study folder)."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Para):
            out.append(f"**{b.text}**" if b.strong else b.text)
        elif isinstance(b, Items):
            out.append("\n".join(f"- {i}" for i in b.items))
        elif isinstance(b, Table):
            lines = ["| " + " | ".join(map(_md_cell, b.columns)) + " |", "|" + "---|" * len(b.columns)]
            lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in b.rows]
            out.append("\n".join(lines))
        elif isinstance(b, Figure):
            out.append(f"![{b.caption}]({b.path.relative_to(base).as_posix()})\n\n*{b.caption}*")
        elif isinstance(b, Code):
            out.append(f"```\n{b.text}\n```")
    return "\n\n".join(out) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1b1f24;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #d0d7de;padding-bottom:.3em}h2{font-size:1.25em;margin-top:1.8em;
border-bottom:1px solid #d0d7de;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #d0d7de;padding:.3em .6em;
text-align:right;vertical-align:top}th{background:#f6f8fa;text-align:left}td.t{text-align:left}
.verdict{font-size:1.15em;background:#eef6ee;border-left:4px solid #2da44e;padding:.6em 1em}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}figure img{width:100%;height:auto;
border:1px solid #eaeef2}figcaption{font-size:.85em;color:#57606a}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:.85em;white-space:pre-wrap}
"""


def _html_block(b: Block) -> str:
    e = html.escape
    if isinstance(b, Heading):
        return f"<h{b.level}>{e(b.text)}</h{b.level}>"
    if isinstance(b, Para):
        return f'<p class="verdict">{e(b.text)}</p>' if b.strong else f"<p>{e(b.text)}</p>"
    if isinstance(b, Items):
        return "<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>"
    if isinstance(b, Table):
        head = "".join(f"<th>{e(c)}</th>" for c in b.columns)
        body = "".join("<tr>" + "".join(f"<td{'' if _NUMBER.match(c) else ' class=t'}>{e(c)}</td>" for c in r)
                       + "</tr>" for r in b.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(b, Figure):
        data = base64.b64encode(b.path.read_bytes()).decode("ascii")
        return (f'<figure style="max-width:{b.width}px"><img alt="{e(b.caption)}" '
                f'src="data:image/png;base64,{data}"><figcaption>{e(b.caption)}</figcaption></figure>')
    return f"<pre>{e(b.text)}</pre>"


def html_page(blocks: Sequence[Block], *, title: str) -> str:
    """One self-contained HTML5 page."""
    body = "\n".join(_html_block(b) for b in blocks)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<style>{_CSS}</style>\n</head>\n'
            f"<body>\n{body}\n</body>\n</html>\n")
