"""A report as sections of blocks, rendered to one self-contained HTML page and to Markdown."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .figures import MATPLOTLIB_LOCK


@dataclass
class Figure:
    """A figure block: ``name`` is also its PNG file name next to the Markdown report.

    ``figure`` is a Matplotlib figure or the PNG already rendered from it (the plot node's file).
    """

    name: str
    figure: plt.Figure | bytes
    caption: str = ""


@dataclass
class Section:
    """A titled part of the report; ``blocks`` are str (paragraph), list[str] (bullets),
    DataFrame (table) or :class:`Figure`."""

    id: str
    title: str
    blocks: list[Any] = field(default_factory=list)


def figure_png(fig: plt.Figure | bytes, dpi: int = 110) -> bytes:
    """PNG bytes of a Matplotlib figure (PNG bytes are returned as they are)."""
    if isinstance(fig, bytes):
        return fig
    buf = io.BytesIO()
    with MATPLOTLIB_LOCK:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, float | np.floating) and float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))  # counts that became floats next to missing values
    if isinstance(value, float | np.floating):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    return str(value)


def _cells(df: pd.DataFrame) -> list[list[str]]:
    return [[_cell(v) for v in row] for row in df.itertuples(index=False, name=None)]


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.8em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f2f2f2}td{max-width:420px;white-space:pre-wrap;overflow-wrap:break-word}
img{max-width:100%;border:1px solid #eee}figcaption{font-size:13px;color:#555}
nav a{margin-right:1em}.scroll{overflow-x:auto}.verdict-reliable{color:#176b1d}.verdict-caution{color:#9a6700}.verdict-refused{color:#b00020}
"""


def render_html(title: str, sections: list[Section], subtitle: str = "") -> str:
    """One self-contained page: inline CSS, figures embedded as base64 PNG (no external files)."""
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    if subtitle:
        out.append(f"<p>{html.escape(subtitle)}</p>")
    out.append("<nav>" + "".join(f"<a href='#{s.id}'>{html.escape(s.title)}</a>" for s in sections) + "</nav>")
    for s in sections:
        out.append(f"<section id='{s.id}'><h2>{html.escape(s.title)}</h2>")
        for b in s.blocks:
            if isinstance(b, Figure):
                data = base64.b64encode(figure_png(b.figure)).decode()
                out.append(f"<figure><img alt='{html.escape(b.name)}' src='data:image/png;base64,{data}'>"
                           f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
            elif isinstance(b, pd.DataFrame):
                head = "".join(f"<th>{html.escape(str(c))}</th>" for c in b.columns)
                body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in _cells(b))
                out.append(f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")
            elif isinstance(b, list):
                items = []
                for item in b:
                    cls = next((k for k in ("reliable", "caution", "refused") if f"[{k}]" in item), "")
                    text = item.replace(f"[{cls}] ", "") if cls else item
                    items.append(f"<li class='verdict-{cls}'>{html.escape(text)}</li>" if cls else f"<li>{html.escape(text)}</li>")
                out.append("<ul>" + "".join(items) + "</ul>")
            else:
                out.append(f"<p>{html.escape(str(b))}</p>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out)


def render_markdown(title: str, sections: list[Section], subtitle: str = "") -> str:
    """The same content as Markdown; figures link their PNG files (``<name>.png``) beside it."""
    out = [f"# {title}", ""]
    if subtitle:
        out += [subtitle, ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for b in s.blocks:
            if isinstance(b, Figure):
                out += [f"![{b.caption or b.name}]({b.name}.png)", ""]
            elif isinstance(b, pd.DataFrame):
                cols = [str(c) for c in b.columns]
                out.append("| " + " | ".join(cols) + " |")
                out.append("|" + "|".join("---" for _ in cols) + "|")
                for row in _cells(b):
                    out.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in row) + " |")
                out.append("")
            elif isinstance(b, list):
                out += [f"- {item}" for item in b] + [""]
            else:
                out += [str(b), ""]
    return "\n".join(out)
