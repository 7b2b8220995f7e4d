"""Named crash points, for proving the crash protocol: ``ONSHORE_FAULT=POINT`` kills the process there.

Every mutating command calls :func:`crash_point` between the steps of its written order
(docs/residency.md, "Crashes"). When the environment names that point the process sends itself
SIGKILL, which no handler can intercept, exactly as a power cut or the OOM killer would end it.
The tests run the real CLI with each point and check that the next command or `onshore doctor`
recovers. Unset (always, outside tests), a crash point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

FAULT_VAR = "ONSHORE_FAULT"

#: Every crash point, in the order each command passes them.
POINTS = (
    "ingest.decided",     # allow decision and attempt row committed; nothing staged
    "ingest.staged",      # shards encrypted in the attempt's staging folder
    "ingest.published",   # shards moved into datasets/NAME; catalog transaction open, nothing appended
    "ingest.ledgered",    # consent.grant and data.ingest appended; catalog not yet committed
    "ingest.committed",   # catalog committed; attempt row not yet removed
    "copy.released",      # the allow decision (which opens the attempt) and key.release appended
    "copy.staged",
    "copy.published",
    "copy.ledgered",      # data.copy appended; catalog not yet committed
    "copy.committed",
    "withdraw.decided",
    "withdraw.ledgered",  # consent.withdraw and key.shred appended; wraps not yet destroyed
    "withdraw.committed",
    "site.ingest.ledgered",  # a site node: data.ingest appended at the coordinator; nothing published
    "site.copy.ledgered",    # a site node: data.copy appended at the coordinator; nothing published
)


def crash_point(name: str) -> None:
    """SIGKILL this process if ``$ONSHORE_FAULT`` names ``name`` (a point of :data:`POINTS`)."""
    if os.environ.get(FAULT_VAR) == name:
        os.kill(os.getpid(), signal.SIGKILL)
