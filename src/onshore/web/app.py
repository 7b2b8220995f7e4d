"""The dashboard's ASGI app: routes, content negotiation, access, and the background ledger check.

Each page is a function in ``onshore.web.pages`` rendered either as HTML (Jinja2, autoescaped:
every name from the catalog or the ledger is text, never markup) or as JSON when the request asks
for it (``Accept: application/json`` or ``?format=json``). The app holds one open workspace and
serialises requests on it; it never decrypts and its only write is the ``data.attest`` entry that
producing a dataset bundle records (a POST, as ``onshore attest dataset`` does; a GET never writes).

The dashboard is a long-running process: every request first calls ``Workspace.refresh`` so that
a withdrawal, a taint or a stopped server recorded by another process shows on the next page
load, and the token gate reads the current token digest on every request, so that a token
re-issued by another process replaces the old one at once. ``Guard`` wraps every response:
it refuses a Host header that is not the dashboard's (DNS rebinding onto loopback), a cross-origin
POST, and adds ``X-Content-Type-Options: nosniff`` and a Content-Security-Policy.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, pass_context
from jinja2.runtime import Context
from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from onshore.encoding import b64encode
from onshore.errors import NotFoundError, OnshoreError, ValidationError
from onshore.i18n import N_, Message, language_from_accept, translator
from onshore.i18n import render as render_message
from onshore.serve.metrics import CONTENT_TYPE, RouteTimer, request_histogram
from onshore.web import access, pages
from onshore.web.graph import lineage_graph
from onshore.workspace import models
from onshore.workspace.metrics import LedgerCollector
from onshore.workspace.workspace import Workspace

log = logging.getLogger("onshore.dashboard")
HERE = Path(__file__).parent
#: Largest bundle or trust root the verify page accepts (a bundle of a busy dataset is a few MB).
MAX_UPLOAD = 64 * 1024 * 1024


def _fmt_bytes(n: int | None) -> str:
    v = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if v < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v} B"


_AGES = ((N_("{n} d ago"), 86400), (N_("{n} h ago"), 3600), (N_("{n} min ago"), 60), (N_("{n} s ago"), 1))

#: Status words people read on the pages (``status`` filter); the CSS class and the JSON keep the
#: word itself. A label may carry a value after the word ("must-retrain-by 2027-03-01").
STATUS_WORDS = frozenset({N_("active"), N_("withdrawn"), N_("ok"), N_("tainted"), N_("must-retrain-by"),
                          N_("blocked"), N_("pass"), N_("fail"), N_("not run")})


@pass_context
def _age(ctx: Context, seconds: int | None) -> str:
    """How long ago, in the page's language ("3 h ago", "3 時間前")."""
    tr = ctx["translator"]
    if seconds is None:
        return str(tr.gettext("never"))
    template, n = next(((t, n) for t, n in _AGES if seconds >= n), _AGES[-1])
    return render_message(Message(template, {"n": seconds // n}), tr)


@pass_context
def _via(ctx: Context, via: str | None) -> str:
    """How a model derives from a dataset (``models.derived_from``), in the page's language; any
    other text as it is."""
    tr = ctx["translator"]
    prefix = models.VIA_FINE_TUNED.split("{", 1)[0]
    if via == models.VIA_TRAINED:
        return str(tr.gettext(via))
    if via and via.startswith(prefix):
        return render_message(Message(models.VIA_FINE_TUNED, {"base": via[len(prefix):]}), tr)
    return via or ""


@pass_context
def _status(ctx: Context, label: str | None) -> str:
    """A status label in the page's language: its word translated, a value after it kept; any
    other text (a name, a word not in ``STATUS_WORDS``) as it is."""
    if not label:
        return ""
    tr = ctx["translator"]
    word, sep, rest = str(label).partition(" ")
    if label in STATUS_WORDS:
        return str(tr.gettext(label))
    return str(tr.gettext(word)) + sep + rest if word in STATUS_WORDS else str(label)


def templates() -> Environment:
    """Autoescape on for every template: a dataset called ``<script>`` is shown as text.

    Text goes through jinja2.ext.i18n (``{% trans %}``, ``_()``); each request renders with the
    translations its ``Accept-Language`` asks for (``page_language``), English without one.
    """
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True, trim_blocks=True,
                      lstrip_blocks=True, extensions=["jinja2.ext.i18n"])
    env.install_null_translations()  # type: ignore[attr-defined]  # added by the i18n extension
    env.filters["bytes"] = _fmt_bytes
    env.filters["age"] = _age
    env.filters["status"] = _status
    env.filters["via"] = _via
    env.filters["q"] = lambda s: quote(str(s), safe="")
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False, default=str)
    return env


@dataclass
class VerifyState:
    """The background full verification of the ledger (``onshore ledger verify``), with progress."""

    state: str = "not run"   # not run | running | ok | failed
    done: int = 0
    total: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    size: int | None = None
    root: str | None = None
    signatures_checked: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """With ``ok``, ``size``, ``root`` and ``signatures_checked`` as `onshore ledger verify --json`."""
        return {"ok": self.state == "ok", **asdict(self)}


class LedgerVerifier:
    """Runs ``Workspace.verify_ledger`` in a thread of its own, on its own workspace handle."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.status = VerifyState()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Start a run unless one is running; True when this call started it."""
        with self._lock:
            if self.status.state == "running":
                return False
            self.status = VerifyState(state="running", started_at=_now())
            self._thread = threading.Thread(target=self._run, name="ledger-verify", daemon=True)
            self._thread.start()
            return True

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _progress(self, done: int, total: int) -> None:
        self.status.done, self.status.total = done, total

    def _run(self) -> None:
        st = self.status
        try:
            with Workspace.open(self.root) as ws:
                st.total = ws.ledger.size()
                report = ws.verify_ledger(self._progress)
            st.size, st.root, st.signatures_checked = report.size, b64encode(report.root), report.signatures_checked
            st.state = "ok"
        except OnshoreError as e:
            st.state, st.error = "failed", str(e)
        except Exception as e:  # noqa: BLE001 - a crashed check must show as failed, not as running forever
            st.state, st.error = "failed", f"{type(e).__name__}: {e}"
        st.finished_at = _now()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def wants_json(request: Request) -> bool:
    if request.query_params.get("format") == "json":
        return True
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def page_language(request: Request) -> dict[str, Any]:
    """Template variables for the reader's language: ``lang``, the gettext functions of jinja2.ext.i18n
    and ``translator`` (what the ``age`` and ``status`` filters read).

    Passed with each render (never installed on the shared environment), so two requests in two
    languages at once each get their own.
    """
    lang = language_from_accept(request.headers.get("accept-language"))
    tr = translator(lang)
    return {"lang": lang, "translator": tr, "gettext": tr.gettext, "_": tr.gettext, "ngettext": tr.ngettext}


def create_app(root: Path, token_digest: str | None = None, host: str = "127.0.0.1") -> Starlette:
    """The dashboard over the workspace at ``root``, bound to ``host``.

    With ``token_digest`` (the digest when it started; see ``onshore.web.access``) every request
    must present the token whose digest the catalog holds at that moment; refused requests are
    logged. Requests whose Host header names neither ``host`` nor a loopback name are refused
    (400), unless ``host`` is a wildcard address (then the token is what protects it).
    """
    root = Path(root)
    ws = Workspace.open(root)
    lock = threading.Lock()
    env = templates()
    verifier = LedgerVerifier(root)

    def render(request: Request, template: str, data: dict[str, Any], status: int = 200,
               as_json: dict[str, Any] | None = None, **extra: Any) -> Response:
        if wants_json(request):
            return JSONResponse(json.loads(json.dumps(data if as_json is None else as_json, default=str)),
                                status_code=status)
        html = env.get_template(template).render(d=data, workspace=ws.config.name, path=request.url.path,
                                                 **page_language(request), **extra)
        return HTMLResponse(html, status_code=status, headers={"Vary": "Accept-Language"})

    def read(fn: Callable[[], Any]) -> Any:
        with lock:  # one request at a time on the shared workspace handle
            ws.refresh(force=True)  # what other processes recorded since the last request, every time
            return fn()

    async def overview(request: Request) -> Response:
        return render(request, "overview.html", read(lambda: pages.overview(ws)))

    async def dataset(request: Request) -> Response:
        name = request.path_params["name"]
        return render(request, "dataset.html", read(lambda: pages.dataset(ws, name)))

    async def bundle(request: Request) -> Response:
        from onshore.attest.bundle import attest_dataset

        name = request.path_params["name"]
        form = await request.form()
        site = str(form.get("site") or request.query_params.get("site") or "") or None
        data = read(lambda: attest_dataset(ws, name, site))
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return Response(json.dumps(data, indent=2) + "\n", media_type="application/json",
                        headers={"Content-Disposition": f'attachment; filename="{safe}.bundle.json"'})

    async def model(request: Request) -> Response:
        name = request.path_params["name"]
        data = read(lambda: pages.model(ws, name))
        return render(request, "model.html", data, graph=lineage_graph(data))

    async def report_png(request: Request) -> Response:
        """A report's PNG from the workspace's reports folder: a plain file name, nothing else."""
        from starlette.responses import FileResponse

        name = request.path_params["file"]
        path = ws.reports_dir / name
        if "/" in name or not name.endswith(".png") or name.startswith(".") or not path.is_file():
            raise NotFoundError(Message(N_("no report image {name!r} in the reports folder"), {"name": name}))
        return FileResponse(path, media_type="image/png")

    async def ledger(request: Request) -> Response:
        q = request.query_params
        f = pages.LogFilter(**{k: q.get(k, "").strip() for k in ("kind", "actor", "dataset", "site", "since",
                                                                  "until")})
        before = _int(q.get("before"), "before")
        per_page = min(_int(q.get("per_page"), "per_page") or 50, 500)
        if verifier.status.state == "not run":
            verifier.start()
        state = read(lambda: pages.ledger_state(ws))
        data = {**state, "verification": verifier.status.to_json(), "log": read(
            lambda: pages.ledger_log(ws, f, before, per_page))}
        return render(request, "ledger.html", data)

    async def ledger_verify(request: Request) -> Response:
        if request.method == "POST":
            verifier.start()
            if not wants_json(request):
                return RedirectResponse("/ledger", status_code=303)
        return JSONResponse(verifier.status.to_json())

    async def verify(request: Request) -> Response:
        if request.method == "GET":
            return render(request, "verify.html", {"report": None})
        from onshore.attest.trust import TrustRoot
        from onshore.attest.verify import verify_bundle
        from onshore.durations import parse_duration

        form = await request.form(max_part_size=MAX_UPLOAD)
        blobs = {}
        for field in ("bundle", "trust_root"):
            part = form.get(field)
            if part is None or isinstance(part, str):
                raise ValidationError(Message(N_("form field {field!r}: choose a file"), {"field": field}))
            blobs[field] = await part.read()  # in memory only: nothing of an upload is stored
        min_w = _int(str(form.get("min_witnesses") or "0"), "min_witnesses") or 0
        max_age_text = str(form.get("max_age") or "").strip()
        max_age = parse_duration(max_age_text, "max_age") if max_age_text else None
        trust = TrustRoot.from_text(blobs["trust_root"], "the trust root")
        report = verify_bundle(blobs["bundle"], trust, min_w, max_age)
        out = report.to_json()  # as `onshore verify --json` prints it, plus the current status here
        current = read(lambda: pages.current_status(ws, out, trust.log_origin, trust.log_vkey))
        return render(request, "verify.html", {"report": out, "current": current},
                      as_json={**out, "current_status": current})

    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ws.ledger))
    timings = request_histogram("onshore_dashboard", registry)

    async def metrics(request: Request) -> Response:
        """Prometheus text: the ledger's size, checkpoint lag and decisions by rule (behind the token gate)."""
        return Response(read(lambda: generate_latest(registry)), media_type=CONTENT_TYPE)

    async def refuse_errors(request: Request, exc: Exception) -> Response:
        status = 404 if isinstance(exc, NotFoundError) else 400
        message = exc.message if isinstance(exc, OnshoreError) else str(exc)
        text = render_message(message, translator(language_from_accept(request.headers.get("accept-language"))))
        return render(request, "error.html", {"error": text}, status=status,
                      as_json={"error": str(exc)})  # JSON stays English, whatever the language

    app = Starlette(routes=[
        Route("/", overview),
        Route("/datasets/{name:str}", dataset),
        Route("/datasets/{name:str}/bundle", bundle, methods=["POST"]),  # it writes: never a GET
        Route("/models/{name:str}", model),
        Route("/reports/{file:str}", report_png),
        Route("/ledger", ledger),
        Route("/ledger/verify", ledger_verify, methods=["GET", "POST"]),
        Route("/verify", verify, methods=["GET", "POST"]),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ], exception_handlers={OnshoreError: refuse_errors})
    app.state.workspace = ws
    app.state.verifier = verifier
    app.add_middleware(RouteTimer, routes=app.routes, histogram=timings)  # innermost: what the pages cost
    if token_digest is not None:
        app.add_middleware(TokenGate, current=lambda: access.token_digest(ws))
    app.add_middleware(Guard, hosts=allowed_hosts(host))  # outermost: every response gets its headers
    return app


#: Largest whole number a query may carry: entry indices are 64-bit database integers.
MAX_INT = 2**63 - 1


def _int(text: str | None, field: str) -> int | None:
    """A query or form value that must be a whole number from 0 to MAX_INT (else 400, naming it)."""
    if text in (None, ""):
        return None
    assert text is not None
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > MAX_INT:
        raise ValidationError(Message(N_("{field}={text!r}: give a whole number from 0 to {max}"),
                                      {"field": field, "text": text[:40], "max": MAX_INT}))
    return int(text)


def allowed_hosts(host: str) -> frozenset[str] | None:
    """The names a request's Host header may carry: the bound address and the loopback names;
    None (any) for a wildcard bind, where the token gate is what protects the dashboard."""
    if host in ("0.0.0.0", "::", ""):
        return None
    return frozenset({host.strip("[]").lower(), "localhost", "127.0.0.1", "::1"})


def _host_name(header: str) -> str:
    """``example.org:7080`` -> ``example.org``; ``[::1]:7080`` -> ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


#: Pages are server-rendered HTML with a stylesheet and images of our own: nothing else may load,
#: no script may run, no other site may frame them or receive a form.
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
HEADERS = [(b"x-content-type-options", b"nosniff"), (b"content-security-policy", CSP.encode()),
           (b"x-frame-options", b"DENY"), (b"referrer-policy", b"same-origin")]


class Guard:
    """Outermost layer: refuses a foreign Host header (400) and a cross-origin POST (403), answers
    an unexpected error with a plain 500 (logged), and adds ``HEADERS`` to every response."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str] | None) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_headers(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = _host_name(headers.get("host", ""))
        refusal: tuple[int, str] | None = None
        if self.hosts is not None and host not in self.hosts:
            refusal = (400, f"Host {host[:100]!r} is not this dashboard's address; open it by one of "
                            f"{', '.join(sorted(self.hosts))}")
        elif scope.get("method") not in ("GET", "HEAD") and "origin" in headers and \
                headers["origin"].split("://", 1)[-1].lower() != headers.get("host", "").lower():
            refusal = (403, "a form on another site may not post to this dashboard")
        if refusal is not None:
            client = scope.get("client") or ("?", 0)
            log.warning("refused %s %s from %s:%s: %s", scope.get("method"), scope.get("path"), client[0], client[1],
                        refusal[1])
            await JSONResponse({"error": refusal[1]}, status_code=refusal[0])(scope, receive, send_with_headers)
            return
        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            log.exception("error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await JSONResponse({"error": "internal error (logged by the dashboard)"},
                               status_code=500)(scope, receive, send_with_headers)


ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class TokenGate:
    """Refuses (401, logged with the client address) every request without the dashboard token.

    ``current()`` gives the digest the catalog holds now (None: no token, everything refused); it is
    read on every request, so a token re-issued by another process replaces the old one at once."""

    def __init__(self, app: ASGIApp, current: Callable[[], str | None]) -> None:
        self.app, self.current = app, current

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        auth = request.headers.get("authorization", "")
        bearer = auth[7:] if auth.lower().startswith("bearer ") else None
        from_query = request.query_params.get("token")
        digest = self.current()
        granted = None if digest is None else next(
            (p for p in (bearer, request.cookies.get(access.COOKIE), from_query) if access.token_matches(digest, p)),
            None)
        if granted is not None and granted == from_query:
            cookie = f"{access.COOKIE}={granted}; HttpOnly; SameSite=Strict; Path=/".encode()

            async def send_with_cookie(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":  # keep the token for the next plain link
                    message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie)]
                await send(message)
            await self.app(scope, receive, send_with_cookie)
            return
        if granted is not None:
            await self.app(scope, receive, send)
            return
        client = scope.get("client") or ("?", 0)
        log.warning("refused %s %s from %s:%s: %s", scope.get("method"), scope.get("path"), client[0], client[1],
                    "wrong token" if (bearer or from_query or request.cookies.get(access.COOKIE)) else "no token")
        await JSONResponse({"error": "this dashboard needs its access token (Authorization: Bearer TOKEN or "
                                     "?token=TOKEN); ask the operator who ran 'onshore dashboard token'"},
                           status_code=401)(scope, receive, send)
