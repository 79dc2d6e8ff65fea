"""One document, two renderings: Markdown (figures as files beside it) and self-contained HTML (figures inline).

A :class:`Document` is a list of blocks (headings, paragraphs, bullet lists, tables, figures); the report and the
model card build one and write both files from it, so the two never disagree.
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..io import atomic_write_text

PCT = {"cer", "accuracy", "acc", "sensitivity", "specificity", "improvement", "change", "ppv", "npv"}


def fmt_cell(col: str, v: Any) -> str:
    """Table cells: NaN as ``-``; rates as percentages (2 decimals); mean counts with 1 decimal; else 4 digits."""
    if isinstance(v, (float, np.floating)):
        if np.isnan(v):
            return "-"
        if any(k in col.lower() for k in PCT):
            return f"{100 * v:.2f}%"
        if "(mean)" in col:  # mean error counts
            return f"{v:.1f}"
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(no rows)_\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(fmt_cell(c, r[c]).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def html_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "<p><em>(no rows)</em></p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt_cell(c, r[c]))}</td>" for c in df.columns) + "</tr>"
                   for _, r in df.iterrows())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _inline_md(text: str) -> str:
    """The little Markdown the documents use (`code`, **bold**), as HTML."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


@dataclass
class Document:
    """Blocks in order: ``("h", level, text)``, ``("p", text)``, ``("ul", [items])``, ``("table", DataFrame)``,
    ``("figure", caption, path)``."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> "Document":
        self.blocks.append(("h", level, text))
        return self

    def para(self, text: str) -> "Document":
        self.blocks.append(("p", text))
        return self

    def bullets(self, items: list[str]) -> "Document":
        self.blocks.append(("ul", list(items)))
        return self

    def table(self, df: pd.DataFrame) -> "Document":
        self.blocks.append(("table", df))
        return self

    def figure(self, caption: str, path: Path) -> "Document":
        self.blocks.append(("figure", caption, Path(path)))
        return self

    def markdown(self, relative_to: Path) -> str:
        out = [f"# {self.title}\n"]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"\n{'#' * b[1]} {b[2]}\n")
            elif b[0] == "p":
                out.append(f"\n{b[1]}\n")
            elif b[0] == "ul":
                out.append("\n" + "".join(f"- {item}\n" for item in b[1]))
            elif b[0] == "table":
                out.append("\n" + md_table(b[1]))
            elif b[0] == "figure":
                rel = Path(b[2]).resolve().relative_to(relative_to.resolve())
                out.append(f"\n**{b[1]}**\n\n![{b[1]}]({rel.as_posix()})\n")
        return "".join(out)

    def html(self, relative_to: Path, inline_figures: bool) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for b in self.blocks:
            if b[0] == "h":
                body.append(f"<h{b[1]}>{_inline_md(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                body.append(f"<p>{_inline_md(b[1])}</p>")
            elif b[0] == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline_md(i)}</li>" for i in b[1]) + "</ul>")
            elif b[0] == "table":
                body.append(html_table(b[1]))
            elif b[0] == "figure":
                if inline_figures:
                    src = "data:image/png;base64," + base64.b64encode(Path(b[2]).read_bytes()).decode()
                else:
                    src = Path(b[2]).resolve().relative_to(relative_to.resolve()).as_posix()
                body.append(f"<figure><img src='{src}' style='max-width:100%' alt='{html.escape(b[1])}'>"
                            f"<figcaption>{html.escape(b[1])}</figcaption></figure>")
        style = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:0 1em}table{border-collapse:"
                 "collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
                 "figcaption{font-size:12px;color:#555}")
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{style}</style></head><body>{''.join(body)}</body></html>")

    def write(self, md_path: Path, html_path: Path, inline_figures: bool = False) -> None:
        atomic_write_text(md_path, self.markdown(md_path.parent))
        atomic_write_text(html_path, self.html(html_path.parent, inline_figures))
