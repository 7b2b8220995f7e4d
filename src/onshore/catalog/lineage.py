"""Model lineage in the catalog: which datasets each model derives from, directly or by fine-tuning.

One function, used by the decision point's policy set (every model's Cedar repeats the clauses of
its lineage) and by the model commands (lineage, derived models, status).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from onshore.catalog import schema as T


def model_datasets(conn: Any) -> dict[str, list[str]]:
    """{model: sorted dataset names it derives from, through every base model it was fine-tuned from}.

    A base chain that loops (no Onshore version writes one) stops at the first repeat.
    """
    direct: dict[str, set[str]] = {}
    for model, dataset in conn.execute(select(T.model_datasets.c.model, T.model_datasets.c.dataset)):
        direct.setdefault(model, set()).add(dataset)
    bases = dict(conn.execute(select(T.models.c.name, T.models.c.base)).all())
    out: dict[str, list[str]] = {}
    for model in bases:
        found, seen, current = set(), set(), model
        while current is not None and current not in seen:
            seen.add(current)
            found |= direct.get(current, set())
            current = bases.get(current)
        out[model] = sorted(found)
    return out
