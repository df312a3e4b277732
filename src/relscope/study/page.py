"""The report as a page: its items (tables, figures, links, gaps) in sections, rendered as Markdown (report.md,
figures linked) and as one self-contained HTML file (report.html, figures embedded, no script).

The page opens with the findings section when there is one, then a table of contents, then the rest.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from relscope.reports.tables import to_markdown

FINDINGS, CONTENTS = "Findings", "Contents"  # the report opens with these, in this order


@dataclass
class Table:
    caption: str
    rows: list[dict]
    source: str = ""  # the CSV the rows came from, when cut
    csv: Path | None = None  # the file the rows came from
    notes: list[str] = field(default_factory=list)  # stated under the table (the findings' verdict rules)


@dataclass
class Figure:
    caption: str
    path: Path


@dataclass
class Missing:
    path: Path


@dataclass
class Link:
    """A raw listing left out of the page: what it holds, and the CSV that has it all."""

    caption: str
    path: Path


Item = Table | Figure | Missing | Link  # what a section lists, in order


@dataclass
class Section:
    title: str
    intro: str = ""
    items: list[Item] = field(default_factory=list)


def _num(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _cells(rows: list[dict]) -> list[dict]:
    """Floats (and numeric strings from CSV) at 4 decimals, as in every table relscope writes."""
    def cell(value):
        if isinstance(value, float) or (isinstance(value, str) and _num(value) is not None
                                        and len(value.partition(".")[2]) > 4):
            return f"{float(value):.4f}"
        return value
    return [{k: cell(v) for k, v in row.items()} for row in rows]


def opening(parts: list[Section]) -> int:
    """How many sections come before the table of contents: the findings, when the report has them."""
    return 1 if parts and parts[0].title == FINDINGS else 0


def anchor(title: str) -> str:
    """A section's HTML id, from its title: 'LoRA anatomy' -> 'lora-anatomy'."""
    return "-".join("".join(c if c.isalnum() else " " for c in title.lower()).split())


def render_markdown(parts: list[Section], root: Path) -> str:
    """report.md: the findings, the contents (a list), then the sections; figures and CSVs linked relative to
    `root`."""
    lines = ["# relscope study report", ""]
    first = opening(parts)
    for index, section in enumerate(parts):
        if index == first:
            lines += [f"## {CONTENTS}", ""] + [f"- {s.title}" for s in parts[first:]] + [""]
        lines += [f"## {section.title}", ""] + ([section.intro, ""] if section.intro else [])
        for item in section.items:
            lines += _markdown_item(item, root)
    return "\n".join(lines)


def _markdown_item(item: Item, root: Path) -> list[str]:
    if isinstance(item, Table):
        lines = [f"**{item.caption}**", "", to_markdown(_cells(item.rows))]
        lines += [f"- {note}" for note in item.notes] + ([""] if item.notes else [])
        return lines + ([f"All rows: {_markdown_link(Path(item.source), root)}", ""] if item.source else [])
    if isinstance(item, Figure):
        return [f"![{item.caption}]({item.path.relative_to(root)})", "", f"*{item.caption}*", ""]
    if isinstance(item, Link):
        return [f"{item.caption}: {_markdown_link(item.path, root)}", ""]
    return [f"*Not produced: `{item.path.relative_to(root)}`*", ""]


def _markdown_link(path: Path, root: Path) -> str:
    relative = path.relative_to(root)
    return f"[{relative}]({relative})"


STYLE = ("body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}td,th{border:1px solid #ccc;"
         "padding:.25em .6em;text-align:left;vertical-align:top}th{background:#f3f3f3}figure{margin:1em 0 2em}"
         "img{max-width:100%;width:46em}.notes{font-size:.85em;margin-top:-1em}"
         "figcaption,.caption{font-style:italic;margin:.3em 0}.missing{color:#a00}")


def render_html(parts: list[Section], root: Path) -> str:
    """report.html: the findings, the contents (linked), then the sections, as one self-contained page (figures
    embedded, no script)."""
    body = ["<h1>relscope study report</h1>"]
    first = opening(parts)
    for index, section in enumerate(parts):
        if index == first:
            body.append(f"<h2 id={anchor(CONTENTS)}>{CONTENTS}</h2><ul>" + "".join(
                f"<li><a href=\"#{anchor(s.title)}\">{html.escape(s.title)}</a></li>" for s in parts[first:])
                + "</ul>")
        body.append(f"<h2 id={anchor(section.title)}>{html.escape(section.title)}</h2>")
        if section.intro:
            body.append(f"<p>{html.escape(section.intro)}</p>")
        body += [_html_item(item, root) for item in section.items]
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>relscope study report</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _html_link(path: Path, root: Path) -> str:
    relative = html.escape(str(path.relative_to(root)))
    return f"<a href=\"{relative}\">{relative}</a>"


def _html_item(item: Item, root: Path) -> str:
    if isinstance(item, Table):
        rows = _cells(item.rows)
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row.values()) + "</tr>"
                       for row in rows)
        notes = ("<ul class=notes>" + "".join(f"<li>{html.escape(n)}</li>" for n in item.notes) + "</ul>"
                 if item.notes else "")
        source = f"<p>All rows: {_html_link(Path(item.source), root)}</p>" if item.source else ""
        return f"<p class=caption>{html.escape(item.caption)}</p><table><tr>{head}</tr>{body}</table>{notes}{source}"
    if isinstance(item, Figure):
        data = base64.b64encode(item.path.read_bytes()).decode("ascii")
        return (f"<figure><img alt=\"{html.escape(item.caption)}\" src=\"data:image/png;base64,{data}\">"
                f"<figcaption>{html.escape(item.caption)}</figcaption></figure>")
    if isinstance(item, Link):
        return f"<p>{html.escape(item.caption)}: {_html_link(item.path, root)}</p>"
    return f"<p class=missing>Not produced: {html.escape(str(item.path.relative_to(root)))}</p>"
