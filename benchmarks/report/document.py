"""The report's document: headings, text, tables, images and code, rendered to Markdown and to one HTML page."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd


class Doc:
    """A tiny document (headings, text, tables, images, code) rendered to both Markdown and HTML."""

    def __init__(self, out: Path):
        self.out, self.blocks = out, []

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def code(self, text: str):
        self.blocks.append(("code", text))

    def table(self, df: pd.DataFrame, empty: str = "(no data)"):
        self.blocks.append(("table", df) if df is not None and not df.empty else ("p", empty))

    def img(self, path: Path | None, alt: str, empty: str):
        self.blocks.append(("img", path.name, alt) if path else ("p", empty))

    def markdown(self) -> str:
        parts = []
        for b in self.blocks:
            if b[0] == "h":
                parts.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                parts.append(b[1])
            elif b[0] == "code":
                parts.append("```\n" + b[1] + "\n```")
            elif b[0] == "table":
                parts.append(md_table(b[1]))
            else:
                parts.append(f"![{b[2]}]({b[1]})")
        return "\n\n".join(parts) + "\n"

    def html(self, title: str) -> str:
        parts = []
        for b in self.blocks:
            if b[0] == "h":
                parts.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                parts.append(f"<p>{inline_html(b[1])}</p>")
            elif b[0] == "code":
                parts.append(f"<pre>{html.escape(b[1])}</pre>")
            elif b[0] == "table":
                parts.append(b[1].to_html(index=False, escape=True, border=0, classes="t"))
            else:
                data = base64.b64encode((self.out / b[1]).read_bytes()).decode()
                parts.append(f'<figure><img alt="{html.escape(b[2])}" src="data:image/png;base64,{data}"></figure>')
        return HTML_PAGE.format(title=html.escape(title), body="\n".join(parts))


def inline_html(text: str) -> str:
    """Markdown `code` spans and **bold** to HTML, everything else escaped."""
    out, parts = [], html.escape(text).split("`")
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"<code>{part}</code>")
        else:
            bold = part.split("**")
            out.append("".join(f"<b>{s}</b>" if j % 2 else s for j, s in enumerate(bold)))
    return "".join(out)


def md_table(df: pd.DataFrame) -> str:
    def cell(x):
        return str(x).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(cell(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(x) for x in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


HTML_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1300px; margin: 1.5em auto; padding: 0 1em; color: #222; }}
table.t {{ border-collapse: collapse; font-size: 13px; margin: 0.5em 0 1.2em; }}
table.t th, table.t td {{ border: 1px solid #ccc; padding: 3px 7px; text-align: left; }}
table.t th {{ background: #f0f0f0; }}
pre {{ background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 12px; }}
img {{ max-width: 100%; }}
h2 {{ border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }}
</style></head>
<body>
{body}
</body></html>
"""
