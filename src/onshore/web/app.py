"""The dashboard's ASGI app: routes, content negotiation, access, and the background ledger check.

Each page is a function in ``onshore.web.pages`` rendered either as HTML (Jinja2, autoescaped:
every name from the catalog or the ledger is text, never markup) or as JSON when the request asks
for it (``Accept: application/json`` or ``?format=json``). The app holds one open workspace and
serialises requests on it; it never decrypts and its only write is the ``data.attest`` entry a
dataset bundle download records, as ``onshore attest dataset`` does.
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

from jinja2 import Environment, FileSystemLoader
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from onshore.errors import NotFoundError, OnshoreError, ValidationError
from onshore.web import access, pages
from onshore.web.graph import lineage_graph
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


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "never"
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= n:
            return f"{seconds // n} {unit} ago"
    return f"{seconds} s ago"


def templates() -> Environment:
    """Autoescape on for every template: a dataset called ``<script>`` is shown as text."""
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True, trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["bytes"] = _fmt_bytes
    env.filters["age"] = _age
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
            st.size, st.root, st.signatures_checked = report.size, report.root.hex(), report.signatures_checked
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


def create_app(root: Path, token_digest: str | None = None) -> Starlette:
    """The dashboard over the workspace at ``root``. With ``token_digest`` every request must
    present the matching token (see ``onshore.web.access``); refused requests are logged."""
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
        html = env.get_template(template).render(d=data, workspace=ws.config.name, path=request.url.path, **extra)
        return HTMLResponse(html, status_code=status)

    def read(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        with lock:  # one request at a time on the shared workspace handle
            return fn()

    async def overview(request: Request) -> Response:
        return render(request, "overview.html", read(lambda: pages.overview(ws)))

    async def dataset(request: Request) -> Response:
        name = request.path_params["name"]
        return render(request, "dataset.html", read(lambda: pages.dataset(ws, name)))

    async def bundle(request: Request) -> Response:
        from onshore.attest.bundle import attest_dataset

        name = request.path_params["name"]
        site = request.query_params.get("site") or None
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
            raise NotFoundError(f"no report image {name!r} in the reports folder")
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
        from onshore.cli.inputs import parse_duration

        form = await request.form(max_part_size=MAX_UPLOAD)
        blobs = {}
        for field in ("bundle", "trust_root"):
            part = form.get(field)
            if part is None or isinstance(part, str):
                raise ValidationError(f"form field {field!r}: choose a file")
            blobs[field] = await part.read()  # in memory only: nothing of an upload is stored
        min_w = _int(str(form.get("min_witnesses") or "0"), "min_witnesses") or 0
        max_age_text = str(form.get("max_age") or "").strip()
        max_age = parse_duration(max_age_text, "max_age") if max_age_text else None
        trust = TrustRoot.from_text(blobs["trust_root"], "the trust root")
        report = verify_bundle(blobs["bundle"], trust, min_w, max_age)
        out = report.to_json()  # as `onshore verify --json` prints it
        return render(request, "verify.html", {"report": out}, as_json=out)

    async def refuse_errors(request: Request, exc: Exception) -> Response:
        status = 404 if isinstance(exc, NotFoundError) else 400
        return render(request, "error.html", {"error": str(exc)}, status=status)

    app = Starlette(routes=[
        Route("/", overview),
        Route("/datasets/{name:str}", dataset),
        Route("/datasets/{name:str}/bundle", bundle),
        Route("/models/{name:str}", model),
        Route("/reports/{file:str}", report_png),
        Route("/ledger", ledger),
        Route("/ledger/verify", ledger_verify, methods=["GET", "POST"]),
        Route("/verify", verify, methods=["GET", "POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ], exception_handlers={OnshoreError: refuse_errors})
    app.state.workspace = ws
    app.state.verifier = verifier
    if token_digest is not None:
        app.add_middleware(TokenGate, digest=token_digest)
    return app


def _int(text: str | None, field: str) -> int | None:
    if text in (None, ""):
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValidationError(f"{field}={text!r}: give a whole number") from None
    if value < 0:
        raise ValidationError(f"{field}={text!r}: give 0 or more")
    return value


ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class TokenGate:
    """Refuses (401, logged with the client address) every request without the dashboard token."""

    def __init__(self, app: ASGIApp, digest: str) -> None:
        self.app, self.digest = app, digest

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        auth = request.headers.get("authorization", "")
        bearer = auth[7:] if auth.lower().startswith("bearer ") else None
        from_query = request.query_params.get("token")
        granted = next((p for p in (bearer, request.cookies.get(access.COOKIE), from_query)
                        if access.token_matches(self.digest, p)), None)
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
