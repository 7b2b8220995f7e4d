"""`onshore dashboard`: the read-only residency dashboard in a browser; `onshore dashboard token`."""

from __future__ import annotations

import typer

from onshore.cli.context import open_workspace, workspace_path
from onshore.cli.output import console, err, esc

dashboard_app = typer.Typer(help="The read-only residency dashboard (a local web page).", invoke_without_command=True)


@dashboard_app.callback()
def dashboard(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind. Anything but loopback needs a token "
                             "('onshore dashboard token') and every request must present it."),
    port: int = typer.Option(7080, "--port", min=1, max=65535, help="TCP port."),
) -> None:
    """Serve the dashboard: overview, datasets, models, ledger and verify pages (HTML or JSON).

    Example: onshore dashboard --port 7080, then open http://127.0.0.1:7080/
    """
    if ctx.invoked_subcommand is not None:
        return
    import logging

    import uvicorn

    from onshore.web.access import required_digest
    from onshore.web.app import create_app

    root = workspace_path()
    with open_workspace() as ws:
        digest = required_digest(ws, host)
    app = create_app(root, digest, host)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    where = f"[{host}]" if ":" in host else host
    err.print(f"dashboard of {esc(root)} on http://{esc(where)}:{port}/"
              + (" (token required)" if digest else "") + "; Ctrl-C stops it", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="warning")


@dashboard_app.command("token")
def token() -> None:
    """Issue the dashboard's access token (printed once; replaces any earlier token).

    Present it as 'Authorization: Bearer TOKEN', or open http://HOST:PORT/?token=TOKEN once.
    """
    from onshore.web.access import issue_token

    with open_workspace() as ws:
        value = issue_token(ws)
    console.print(value, highlight=False)
    err.print("keep it secret: the ledger holds only its SHA-256; 'onshore dashboard token' again revokes it")
