"""The model page's lineage graph, laid out on the server as plain geometry for an inline SVG.

Columns, left to right: datasets -> members (their owners) -> training sites -> models (the
model's ancestors and the model itself) -> models fine-tuned from it. No JavaScript and no
graph library: the template draws rectangles, lines and text (escaped like every other name).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from onshore.i18n import N_

#: Column headings, shown in the page's language (the template translates them).
COLUMNS = (N_("dataset"), N_("member"), N_("training site"), N_("model"), N_("fine-tuned"))
_W, _H, _GAP_X, _GAP_Y, _TOP = 170, 34, 60, 14, 34


@dataclass(frozen=True)
class Node:
    key: str
    column: int
    label: str
    sub: str
    x: int = 0
    y: int = 0
    w: int = _W
    h: int = _H


@dataclass
class Graph:
    width: int
    height: int
    columns: list[tuple[int, str]]
    nodes: list[Node] = field(default_factory=list)
    edges: list[str] = field(default_factory=list)  # SVG path data


def lineage_graph(info: dict[str, Any]) -> Graph:
    """Lay out ``info`` (the model page's dict: ``lineage`` newest first, ``fine_tuned``)."""
    cols: list[dict[str, tuple[str, str]]] = [{} for _ in COLUMNS]
    links: set[tuple[str, str]] = set()
    levels = list(reversed(info["lineage"]))  # oldest ancestor first
    for i, level in enumerate(levels):
        site_key = f"s:{level['site']}"
        model_key = f"m:{level['model']}"
        cols[2].setdefault(site_key, (level["site"], level["jurisdiction"]))
        cols[3].setdefault(model_key, (level["model"], level["purpose"]))
        links.add((site_key, model_key))
        if i:
            links.add((f"m:{levels[i - 1]['model']}", model_key))
        for d in level["datasets"]:
            dk, mk = f"d:{d['dataset']}", f"o:{d['owner']}"
            cols[0].setdefault(dk, (d["dataset"], d.get("embodiment", "")))
            cols[1].setdefault(mk, (d["owner"], N_("member")))  # translated by the template
            links.add((dk, mk))
            links.add((mk, site_key))
    for child in info.get("fine_tuned", []):
        ck = f"f:{child['name']}"
        cols[4].setdefault(ck, (child["name"], f"{child['site']} · {child['status']}"))
        links.add((f"m:{info['name']}", ck))
    placed: dict[str, Node] = {}
    rows = max(1, *(len(c) for c in cols))
    for ci, col in enumerate(cols):
        for ri, (key, (label, sub)) in enumerate(col.items()):
            placed[key] = Node(key, ci, label, sub, x=10 + ci * (_W + _GAP_X), y=_TOP + ri * (_H + _GAP_Y))
    g = Graph(width=20 + len(COLUMNS) * (_W + _GAP_X) - _GAP_X, height=_TOP + rows * (_H + _GAP_Y) + 10,
              columns=[(10 + ci * (_W + _GAP_X), name) for ci, name in enumerate(COLUMNS)],
              nodes=list(placed.values()))
    for a, b in sorted(links):
        na, nb = placed[a], placed[b]
        if na.column == nb.column:  # base -> fine-tuned model in the same column: a bow on the right
            x, y1, y2 = na.x + na.w, na.y + na.h // 2, nb.y + nb.h // 2
            g.edges.append(f"M{x},{y1} C{x + 40},{y1} {x + 40},{y2} {x},{y2}")
        else:
            x1, y1, x2, y2 = na.x + na.w, na.y + na.h // 2, nb.x, nb.y + nb.h // 2
            mid = (x1 + x2) // 2
            g.edges.append(f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}")
    return g
