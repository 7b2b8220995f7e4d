"""Serving a model at a site, start to stop: what ``onshore serve MODEL --site S`` does.

Order: load the model through :func:`onshore.serve.loading.load_served_model` (decided for
``serve`` on every lineage dataset, digests checked; a refusal leaves only its decisions in the
ledger), listen, then record ``model.serve`` (``event: start``) with the model digest, signed by
the site. On stop: close every connection, ingest what was recorded (with ``--record-policy``),
then record ``model.serve`` (``event: stop``) with the digest, counts of sessions, actions,
refusals and interventions, and the recorded dataset(s) with their ingest entries: the ledger
ties the new data to the model that produced it. The server's event loop runs on its own thread,
so the caller (the CLI, the demo, a test) keeps its own.

While it runs, the server asks :class:`Recheck` at least every half second. ``Workspace.refresh``
says whether another process appended a rule-changing entry (a withdrawal, a site's roles, a
token); only then is ``serve`` re-decided, without recording, and only a deny is recorded (one
``decision`` entry). A deny ends every session with a ``refused`` error naming the rule, and the
run stops by itself: its ``model.serve`` stop entry carries ``reason``. E-stops latched and reset
through the server are recorded as ``model.serve`` entries (``event: estop`` / ``estop_reset``)
with the client and who did it.

Served as ``NAME@ALIAS`` (and not recording), the server follows the alias (:class:`Follow`):
when it moves, the newly named version is loaded (decided and its key released, recorded), a
``model.serve`` entry ``event: follow`` names it and the version it replaces, and sessions that
connect from then on act with it. Sessions already connected keep their version to the end, so
none is dropped; every version still served is re-decided by :class:`Recheck`, and a deny of any
of them refuses the whole server (fail closed). With ``--record-policy`` the server stays on the
version it started with, since the recording is provenance of one model.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from onshore.errors import LockTimeout, OnshoreError, ValidationError
from onshore.i18n import N_, Message
from onshore.names import check_name, parse_model_ref
from onshore.residency.modelpolicy import EffectivePolicy, strictest_clause
from onshore.residency.pdp import model_request
from onshore.residency.policy import UsagePolicy, load_policy
from onshore.serve.loading import ServedModel, load_served_export, load_served_model
from onshore.serve.record import Recorder, RecordOptions
from onshore.serve.server import PolicyServer, ServerLimits
from onshore.serve.tokens import TokenTable
from onshore.workspace import exportfolder, versions
from onshore.workspace import models as wsm
from onshore.workspace.paths import RECORDING_SPOOL
from onshore.workspace.registry import get_site
from onshore.workspace.workspace import Workspace

log = logging.getLogger("onshore.serve")


@dataclass
class StopReport:
    """What a serving run did, as its ``model.serve`` stop entry says."""

    start_index: int
    stop_index: int
    connections: int
    actions: int
    refused: int
    errors: int
    interventions: dict[str, int]
    recorded: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None  # why serving was refused while running (None: stopped by its caller)


class Running:
    """A server running on its own thread; ``stop()`` (or leaving the ``with`` block) ends it."""

    def __init__(self, ws: Workspace, served: ServedModel, server: PolicyServer, loop: asyncio.AbstractEventLoop,
                 thread: threading.Thread, host: str, port: int, start_index: int, record: RecordOptions | None
                 ) -> None:
        self.ws, self.served, self.server, self._loop, self._thread = ws, served, server, loop, thread
        self.host, self.port, self.start_index, self.record = host, port, start_index, record
        self.report: StopReport | None = None
        self._stopping = threading.Lock()
        # a refusal while running stops the run by itself, so its stop entry says why at once
        self._watcher = threading.Thread(target=self._stop_when_refused, name="onshore-serve-refusal", daemon=True)
        self._watcher.start()

    def _stop_when_refused(self) -> None:
        while self.report is None:
            if self.server.refused.wait(0.5):
                try:
                    self.stop()
                except Exception:  # the caller's stop() raises it again
                    log.exception("stopping after the refusal failed")
                return

    @property
    def refusal(self) -> str | None:
        """Why serving was refused while running, else None."""
        return self.server.refusal

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    def stop(self) -> StopReport:
        """Close the server, ingest the recording, record the stop (with the refusal's reason, if
        serving was refused); idempotent, from any thread."""
        with self._stopping:
            return self._stop()

    def _stop(self) -> StopReport:
        if self.report is not None:
            return self.report
        try:
            asyncio.run_coroutine_threadsafe(self.server.close(), self._loop).result(timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        st = self.server.stats
        recorded: list[dict[str, Any]] = []
        failure: BaseException | None = None
        rec = self.server.recorder
        if rec is not None and self.record is not None:
            try:
                recorded = rec.ingest(self.ws, self.served.site, self.served.name, self.record)
            except BaseException as e:  # the stop is recorded whatever happened to the recording
                failure = e
        body = {"event": "stop", "model": self.served.name, "digest": self.served.digest, "site": self.served.site,
                "start_index": self.start_index, "connections": st.connections, "actions": st.actions,
                "refused": st.refused, "errors": st.errors, "dropped": st.dropped,
                "interventions": dict(st.interventions), "recorded": recorded}
        if failure is not None:
            body["record_failed"] = str(failure)[:500]
        if self.server.refusal is not None:
            body["reason"] = self.server.refusal
        if self.server.served.name != self.served.name:  # an alias followed: the version served last
            body["followed_to"] = self.server.served.name
        idx = self.ws.record("model.serve", f"site:{self.served.site}", body)
        self.report = StopReport(self.start_index, idx, st.connections, st.actions, st.refused, st.errors,
                                 dict(st.interventions), recorded, self.server.refusal)
        if failure is not None:
            raise failure
        return self.report

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _check_record(ws: Workspace, site: str, record: RecordOptions, model: str | None = None) -> None:
    """Refuse, before serving, a recording that could not be ingested: unknown member, a bad
    policy file, a dataset name taken or malformed, a site that stores nothing; and a recording
    policy looser than ``model``'s effective policy (what a served run did is derived from the
    model, so it may go no further than the model's lineage allows), naming each looser field."""
    ws.row("member", record.member)
    policy, _ = load_policy(record.policy)
    if record.dataset is not None:
        check_name(record.dataset, "dataset")
        try:
            ws.row("dataset", record.dataset)
        except OnshoreError:
            pass
        else:
            raise ValidationError(f"dataset {record.dataset!r} already exists; name the recording with a new "
                                  "--record-as")
    if "storage" not in get_site(ws, site).roles:
        raise ValidationError(Message(N_("site {site!r} has no storage role, so a recording cannot be kept there; "
                                         "serve without --record-policy or at a site with roles serve,storage"),
                                      {"site": site}))
    if model is not None:
        looser = _looser_fields(policy, wsm.effective(ws, model),
                                all(d.policy.redistribution for d in wsm.lineage_datasets(ws, model)))
        if looser:
            raise ValidationError(f"{record.policy}: the recording's policy is looser than model {model!r}'s effective "
                                  f"policy in {'; '.join(looser)}; narrow those fields (see 'onshore model show "
                                  f"{model}')")


def _looser_fields(policy: UsagePolicy, eff: EffectivePolicy, redistributable: bool) -> list[str]:
    """Each field where ``policy`` allows more than ``eff`` (with what it adds)."""
    out = []
    extra = sorted(set(policy.jurisdictions) - set(eff.jurisdictions))
    if extra:
        out.append(f"jurisdictions (adds {', '.join(extra)}; the model allows {', '.join(eff.jurisdictions)})")
    if eff.sites is not None and (not policy.sites or set(policy.sites) - set(eff.sites)):
        out.append(f"sites (the model allows only {', '.join(eff.sites) or 'none'})")
    extra = sorted(set(policy.purposes) - set(eff.purposes))
    if extra:
        out.append(f"purposes (adds {', '.join(extra)}; the model allows {', '.join(eff.purposes)})")
    if policy.expires > eff.expires:
        out.append(f"expires ({policy.expires.isoformat()} is after the model's {eff.expires.isoformat()})")
    if policy.derived_models != eff.derived_models and \
            strictest_clause([policy.derived_models, eff.derived_models]) != policy.derived_models:
        out.append(f"derived_models ({policy.derived_models!r} is weaker than the model's {eff.derived_models!r})")
    if policy.redistribution and not redistributable:
        out.append("redistribution (a lineage dataset does not allow it)")
    return out


@dataclass
class Recheck:
    """Re-decides serving ``served`` when another process changed a rule: called by the server
    every ``poll_s``, it returns the refusal (naming the deciding rules and the recorded decision)
    or None. Nothing is recorded unless it refuses, so polling does not fill the ledger. A change
    seen but not yet decided (a busy ledger: ``LockTimeout``, raised for the server to retry) is
    decided at the next call. A workspace that can no longer be decided on (a catalog that
    disagrees with the ledger) refuses: fail closed; so does a deny whose ``decision`` entry
    cannot be written (the refusal says it was not recorded). Rules also change with the calendar (a
    policy's ``expires``, a ``retrain-by`` date), so a new day (``today``, UTC) is re-decided too."""

    ws: Workspace
    served: ServedModel
    pending: bool = False
    #: versions served since (an alias followed): re-decided too, the first deny refuses everything
    others: list[ServedModel] = field(default_factory=list)
    today: Callable[[], dt.date] = field(default=lambda: dt.datetime.now(dt.UTC).date())
    decided_for: dt.date | None = None

    def __call__(self) -> str | None:
        day = self.today()
        self.pending = self.ws.refresh() or self.pending or day != self.decided_for
        if not self.pending:
            return None
        decided: list[tuple[ServedModel, Any, Any]] = []
        for served in (self.served, *self.others):
            request = replace(model_request(f"site:{served.site}", "serve", served.name, served.site,
                                            served.purpose), today=day)
            try:
                decision = self.ws.pdp().decide(request)
            except LockTimeout:
                raise
            except OnshoreError as e:
                return f"serving {served.name} at {served.site} can no longer be decided: {e}"
            decided.append((served, request, decision))
        self.pending, self.decided_for = False, day
        refused = [(s, r, d) for s, r, d in decided if not d.allowed]
        if not refused:
            return None
        served, request, decision = refused[0]
        try:
            recorded = f"ledger entry {self.ws.record('decision', request.principal, decision.to_json())}"
        except Exception as e:  # fail closed: a deny that cannot be recorded (a busy ledger) still refuses
            log.error("could not record the refusal of serving %s: %s", served.name, e)
            recorded = f"not recorded: {e}"
        return (f"serving {served.name} at {served.site} for {served.purpose!r} is refused now; deciding rule(s): "
                f"{', '.join(decision.rules)} ({recorded})")


@dataclass
class Follow:
    """Follows the alias ``ref`` (``NAME@ALIAS``) while serving: called by the server every
    ``poll_s``, it looks at the registry only when an entry that can move the alias or make a
    version servable here was appended (``RETRY_KINDS``), and when the alias names
    another version it loads that one through ``loader`` (decided for ``serve`` at the site and its
    key released, both recorded), adds it to ``recheck``, records ``model.serve`` ``event: follow``
    (the version, the one it replaces, the reference) and returns it for new sessions. A version
    that cannot be served here (refused, archived, not at this site, not acting for the openpi
    embodiment) is logged and tried again only after such an entry (a model copy, an alias move, a
    site change), never after the decisions its own try recorded; serving goes on meanwhile."""

    RETRY_KINDS = frozenset({"model.copy", "model.alias", "model.archive", "site.add"})

    ws: Workspace
    ref: str
    site: str
    purpose: str
    current: str
    recheck: Recheck
    loader: Callable[..., ServedModel] = load_served_model
    openpi_embodiment: str | None = None
    start_index: int | None = None  # the run's start entry, once recorded
    followed: list[str] = field(default_factory=list)
    skipped: str | None = None  # the version the alias names that could not be served here
    _seen: int = -1

    def __call__(self) -> ServedModel | None:
        if self._seen < 0:
            size, kinds = self.ws.ledger.size(), set(self.RETRY_KINDS)
        else:
            size, kinds = self.ws.ledger.kinds_since(self._seen)
        if size == self._seen:
            return None
        self._seen = size
        if not kinds & self.RETRY_KINDS:  # decisions, serve events...: the alias cannot have moved
            return None
        self.skipped = None
        try:
            reg = versions.read_registry(self.ws)
            target = versions.resolve_in(reg, self.ref)
        except OnshoreError as e:  # the alias removed, say: the current version stays
            log.warning("alias %s no longer resolves (%s); serving %s still", self.ref, e, self.current)
            return None
        if target in (self.current, self.skipped):
            return None
        try:
            versions.check_usable(self.ws, target, "serve", reg)
            served = self.loader(self.ws, target, self.site, self.purpose)
            if self.openpi_embodiment is not None:
                _openpi_embodiment(served, self.openpi_embodiment)
        except OnshoreError as e:
            log.warning("alias %s now names %s, which is not served here (%s); serving %s still", self.ref, target,
                        e, self.current)
            self.skipped = target
            return None
        previous, self.current, self.skipped = self.current, target, None
        self.recheck.others.append(served)
        self.followed.append(target)
        self.ws.record("model.serve", f"site:{self.site}", {
            "event": "follow", "model": target, "previous": previous, "ref": self.ref, "digest": served.digest,
            "files": served.files, "site": self.site, "purpose": served.purpose,
            "release_index": served.release_index, "start_index": self.start_index,
            "embodiments": sorted(served.embodiments)})
        return served


def latched_estops(ws: Workspace, site: str) -> dict[tuple[str, str], str]:
    """The machines of ``site`` whose e-stop the ledger shows latched and never reset, by (client,
    embodiment), with the reason: read when a server starts, so that a crash or restart of the
    server (whatever model it serves next) does not clear a latch; only ``reset_estop`` does."""
    latched: dict[tuple[str, str], str] = {}
    for e in ws.ledger.entries(kinds=["model.serve"]):
        b = e.entry.body
        if e.entry.actor != f"site:{site}" or b.get("site") != site or b.get("event") not in ("estop", "estop_reset"):
            continue
        machine = (str(b.get("client")), str(b.get("embodiment")))
        if b["event"] == "estop":
            latched.setdefault(machine, str(b.get("reason") or "e-stop"))
        else:
            latched.pop(machine, None)
    return latched


PROTOCOLS = ("onshore", "openpi")


def _openpi_embodiment(served: ServedModel, embodiment: str | None) -> str:
    """The embodiment openpi sessions act for: the one named, or the model's only one."""
    known = sorted(served.embodiments)
    if embodiment is None:
        if len(known) != 1:
            raise ValidationError(f"model {served.name} acts for {', '.join(known)}: openpi clients name no "
                                  "embodiment, so give --embodiment")
        return known[0]
    if embodiment not in served.embodiments:
        raise ValidationError(f"model {served.name} does not act for embodiment {embodiment!r}; it knows "
                              f"{', '.join(known)}")
    return embodiment


def start(ws: Workspace, model: str | None, site: str, host: str = "127.0.0.1", port: int = 7070,
          record: RecordOptions | None = None, limits: ServerLimits | None = None,
          loader: Callable[..., ServedModel] = load_served_model, purpose: str | None = None,
          protocol: str = "onshore", embodiment: str | None = None, export: Path | None = None) -> Running:
    """Serve ``model`` at ``site`` on ``host:port`` (0: a free port) until ``stop()``; ``purpose``
    defaults to the purpose the model was trained for. ``model`` is a reference: ``NAME`` (its
    latest version), ``NAME@V`` or ``NAME@ALIAS``, resolved here once (``versions.resolve``); the
    server serves that version, and its ledger entries name the version's id and the reference.
    ``protocol``: ``"onshore"`` (its own,
    ``docs/serving.md``) or ``"openpi"`` (openpi-client's, every session acting for
    ``embodiment``, which may be left out when the model acts for one embodiment only).

    Refused: see :func:`load_served_model` (exit 3 for policy); a bad recording (see
    ``_check_record``); an unknown protocol, or an embodiment the model does not act for
    (``ValidationError``); an unknown or archived version (``versions.resolve``,
    ``versions.check_usable``); a port that cannot be bound (``OnshoreError``).

    ``export`` (instead of ``model``, which is then None) serves the model of an export folder
    (``onshore serve --from DIR``), loaded by :func:`load_served_export`: refused as that says
    (a folder that differs from its manifest or the ledger, before anything is decided), then as
    a model served by name. Its entries name the model's id and the folder; it follows no alias.
    """
    if (model is None) == (export is None):
        raise ValidationError("serve either a model (NAME, NAME@VERSION or NAME@ALIAS) or an export folder "
                              "(--from DIR), one of the two")
    if export is not None:
        ref = str(export)
        model = exportfolder.read_manifest(export).model  # the layout only: the loader checks every byte
    else:
        assert model is not None
        ref = model
        model = versions.resolve(ws, ref)
        versions.check_usable(ws, model, "serve")
    if protocol not in PROTOCOLS:
        raise ValidationError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if embodiment is not None and protocol != "openpi":
        raise ValidationError("an embodiment is chosen per session in Onshore's protocol (its reset message); "
                              "--embodiment is for --protocol openpi")
    if record is not None:
        _check_record(ws, site, record, model)
    served = load_served_export(ws, export, site, purpose) if export is not None else loader(ws, model, site, purpose)
    openpi_emb = _openpi_embodiment(served, embodiment) if protocol == "openpi" else None
    tokens = TokenTable(ws, site)
    recorder = Recorder(Path(get_site(ws, site).root) / RECORDING_SPOOL) if record is not None else None
    ws.refresh(force=True)  # what the load decided on is the baseline; later appends are news

    def on_event(body: dict[str, Any]) -> None:  # the body names the session's version
        ws.record("model.serve", f"site:{site}", {"model": model, "digest": served.digest, **body, "site": site})

    from onshore.workspace.metrics import LedgerCollector

    recheck = Recheck(ws, served)
    follow = None
    if export is None and parse_model_ref(ref).alias is not None and record is None:
        follow = Follow(ws, ref, site, served.purpose, model, recheck, loader, openpi_emb)
    server = PolicyServer(served, tokens, limits, recorder, recheck, on_event, latched_estops(ws, site),
                          openpi_embodiment=openpi_emb, metrics_extra=(LedgerCollector(ws.ledger),), follow=follow)
    loop = asyncio.new_event_loop()
    started: dict[str, Any] = {}
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            started["port"] = loop.run_until_complete(server.start(host, port))
        except BaseException as e:
            started["error"] = e
            ready.set()
            loop.close()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    thread = threading.Thread(target=run, name=f"onshore-serve-{model}", daemon=True)
    thread.start()
    ready.wait()
    if "error" in started:
        e = started["error"]
        if isinstance(e, OSError):
            raise OnshoreError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port or "
                               "--host") from None
        raise e
    bound = started["port"]
    idx = ws.record("model.serve", f"site:{site}", {
        "event": "start", "model": model, "digest": served.digest, "files": served.files, "site": site,
        "host": host, "port": bound, "purpose": served.purpose, "protocol": protocol, "ref": ref,
        "follows": follow is not None,
        "release_index": served.release_index,
        **({"export": served.export} if served.export is not None else {}),
        "embodiments": sorted(served.embodiments),
        "record": None if record is None else {"member": record.member, "policy": str(record.policy),
                                               "dataset": record.dataset}})
    if follow is not None:
        follow.start_index = idx
    return Running(ws, served, server, loop, thread, host, bound, idx, record)
