"""Building blocks of every report recbrew writes (eval, eval sweep, simulate): number formatting, Markdown and
HTML tables, the HTML stylesheet, and matplotlib figures as base64 PNG for self-contained pages."""

from __future__ import annotations

import base64
import html
import io


def fmt(v, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 20px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
td.win{background:#e7f5e4;font-weight:600}.ci{color:#777;font-size:11px}
td.flag{color:#8a5a00;text-align:left}tr.flagged td{background:#fbf7ec}td.note{text-align:left}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}h3{font-size:14px}img{max-width:100%}
details{margin:6px 0}.note{color:#555;font-size:13px}
"""


def html_table(header: list[str], rows: list[list[str]], classes: list[list[str]] | None = None,
                flagged: list[bool] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, r in enumerate(rows):
        cells = []
        for j, c in enumerate(r):
            cls = classes[i][j] if classes else ""
            cells.append(f"<td{f' class={cls!r}' if cls else ''}>{c}</td>")
        body.append(("<tr class='flagged'>" if flagged and flagged[i] else "<tr>") + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def img(b64: str | None, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">' if b64 else ""


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_base64(fig) -> str:
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")
