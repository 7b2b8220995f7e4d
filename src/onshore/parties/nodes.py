"""`onshore doctor --kit`: from one party's kit, check every node it can reach: the coordinator
(answers over mutual TLS, its checkpoint verifies with the log key in the kit) and each site node
(answers its Flight health action over mutual TLS). Changes nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow.flight as fl

from onshore.errors import OnshoreError
from onshore.ledger.checkpoint import verify_checkpoint
from onshore.ledger.notes import NoteError, SignatureError, encode_verifier_key
from onshore.parties.client import CoordinatorClient
from onshore.parties.kit import Kit
from onshore.parties.site import flight_client


@dataclass(frozen=True)
class NodeCheck:
    node: str        # "coordinator" or "site:NAME"
    endpoint: str
    ok: bool
    detail: str      # what was found, or what is wrong and what to do


def check_nodes(kit: Kit, wait_s: float = 3.0) -> list[NodeCheck]:
    """One check per node the kit names; never raises for a node that fails (it is reported)."""
    out = []
    try:
        co = CoordinatorClient(kit, wait_s=wait_s, quiet=True)
        size = co.health()["ledger_size"]
        origin = f"onshore/{kit.consortium}"
        cp = verify_checkpoint(co.checkpoint(), encode_verifier_key(origin, kit.public_key("coordinator")), origin)  # type: ignore[arg-type]
        out.append(NodeCheck("coordinator", kit.coordinator_url, True,
                             f"ledger {size} entries; checkpoint at {cp.size} verifies with the kit's log key"))
    except (OnshoreError, NoteError, SignatureError, KeyError, TypeError) as e:
        out.append(NodeCheck("coordinator", kit.coordinator_url, False,
                             f"{e}; start it with 'onshore coordinator serve' or check its certificate"))
    for name, site in kit.sites.items():
        try:
            res = list(flight_client(kit, site.flight).do_action(fl.Action("health", b""),
                                                                 fl.FlightCallOptions(timeout=wait_s)))
            held = json.loads(res[0].body.to_pybytes())["datasets"]
            out.append(NodeCheck(f"site:{name}", site.flight, True,
                                 f"{site.jurisdiction}; holds {len(held)} dataset(s)"))
        except (fl.FlightError, OSError, ValueError, KeyError, IndexError) as e:
            text = str(e).split("Detail:")[0].strip()
            out.append(NodeCheck(f"site:{name}", site.flight, False,
                                 f"{text}; start it with 'onshore site serve' on its machine"))
    return out
