"""`onshore site`, `onshore member` and `onshore embodiment`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer

from onshore.cli.context import open_workspace
from onshore.cli.output import console, esc, print_json, table

site_app = typer.Typer(help="Sites: where data may sit, be computed on and served.", no_args_is_help=True)
member_app = typer.Typer(help="Members: the companies that own datasets.", no_args_is_help=True)
embodiment_app = typer.Typer(help="Embodiments: machine types and their channels.", no_args_is_help=True)

JSON = typer.Option(False, "--json", help="Print JSON only, for scripts.")


@site_app.command("add")
def site_add(
    name: str = typer.Argument(..., help="A new site name, e.g. sakai."),
    jurisdiction: str = typer.Option(..., "--jurisdiction", metavar="CODE", help="ISO 3166-1 alpha-2 code, e.g. JP."),
    roles: str = typer.Option(..., "--roles", metavar="ROLES", help="Comma-separated: storage,compute,serve."),
    operator: str = typer.Option("", "--operator", help="Who runs the site, e.g. \"Sakai DC\"."),
    root: Path | None = typer.Option(None, "--root", metavar="DIR", help="Storage folder (default: in the workspace)."),
) -> None:
    """Register a site; it gets its own identity key and key-encryption key.

    Example: onshore site add sakai --jurisdiction JP --roles storage,compute --operator "Sakai DC"
    """
    from onshore.workspace import registry

    with open_workspace() as ws:
        site = registry.add_site(ws, name, jurisdiction, roles, operator, root)
    console.print(f"site [bold]{esc(site.name)}[/] added in {site.jurisdiction} with roles {','.join(site.roles)}")


@site_app.command("set")
def site_set(name: str = typer.Argument(..., help="A registered site."),
             jurisdiction: str = typer.Option(..., "--jurisdiction", metavar="CODE",
                                              help="The new ISO 3166-1 alpha-2 code, e.g. JP.")) -> None:
    """Change a site's jurisdiction (refused once data has been placed there)."""
    from onshore.workspace import registry

    with open_workspace() as ws:
        site = registry.set_site_jurisdiction(ws, name, jurisdiction)
    console.print(f"site [bold]{esc(site.name)}[/] is now in {site.jurisdiction}")


@site_app.command("roles")
def site_roles(name: str = typer.Argument(..., help="A registered site."),
               roles: str = typer.Option(..., "--roles", metavar="ROLES",
                                         help="The new roles, comma-separated: storage,compute,serve.")) -> None:
    """Change a site's roles; a server running at a site that loses serve stops within two seconds.

    Example: onshore site roles tokyo --roles storage,compute
    """
    from onshore.workspace import registry

    with open_workspace() as ws:
        site = registry.set_site_roles(ws, name, roles)
    console.print(f"site [bold]{esc(site.name)}[/] now has roles {','.join(site.roles)}")


@site_app.command("list")
def site_list(json_: bool = JSON) -> None:
    """List sites with their jurisdictions and roles."""
    from onshore.workspace import registry

    with open_workspace() as ws:
        sites = registry.list_sites(ws)
    if json_:
        print_json([{**asdict(s), "roles": list(s.roles)} for s in sites])
        return
    table("Sites", ["name", "jurisdiction", "roles", "operator", "root"],
          [(s.name, s.jurisdiction, ",".join(s.roles), s.operator, s.root) for s in sites])


@member_app.command("add")
def member_add(name: str = typer.Argument(..., help="A new member name, e.g. kansai-robotics.")) -> None:
    """Register a member; it gets its own Ed25519 key."""
    from onshore.workspace import registry

    with open_workspace() as ws:
        registry.add_member(ws, name)
    console.print(f"member [bold]{esc(name)}[/] added")


@member_app.command("list")
def member_list(json_: bool = JSON) -> None:
    """List members."""
    from onshore.workspace import registry

    with open_workspace() as ws:
        members = registry.list_members(ws)
    if json_:
        print_json(members)
        return
    table("Members", ["name", "public key", "added"], [(m["name"], m["public_key"], m["created_at"]) for m in members])


@embodiment_app.command("add")
def embodiment_add(file: Path = typer.Argument(..., help="The embodiment spec (TOML), e.g. tel/sawyer-metaworld.toml."
                                               )) -> None:
    """Register an embodiment spec (TOML): channels with units and limits, and the control rate."""
    from onshore.workspace import registry

    with open_workspace() as ws:
        emb = registry.add_embodiment(ws, file)
    console.print(f"embodiment [bold]{esc(emb.name)}[/]: {emb.state_dim} state, {emb.action_dim} action channels "
                  f"at {emb.control_hz:g} Hz")


@embodiment_app.command("list")
def embodiment_list(json_: bool = JSON) -> None:
    """List embodiments."""
    from onshore.workspace import registry

    with open_workspace() as ws:
        embs = registry.list_embodiments(ws)
    if json_:
        print_json([e.to_dict() for e in embs])
        return
    table("Embodiments", ["name", "control Hz", "state", "action"],
          [(e.name, f"{e.control_hz:g}", e.state_dim, e.action_dim) for e in embs])


custody_app = typer.Typer(help="A site's key custody: files (default) or a PKCS#11 token.", no_args_is_help=True)
site_app.add_typer(custody_app, name="custody")


@custody_app.command("migrate")
def custody_migrate(
    name: str = typer.Argument(..., help="A registered site."),
    to: str = typer.Option(..., "--to", help="The new custody: pkcs11."),
    module: Path = typer.Option(..., "--module", metavar="LIB", help="The PKCS#11 library, e.g. "
                                "/usr/lib/softhsm/libsofthsm2.so."),
    token_label: str = typer.Option(..., "--token-label", metavar="LABEL", help="The token's label."),
    pin_env: str | None = typer.Option(None, "--pin-env", metavar="VAR",
                                       help="Environment variable holding the PIN (never the PIN itself)."),
    pin_file: Path | None = typer.Option(None, "--pin-file", metavar="FILE", help="File holding the PIN."),
    json_: bool = JSON,
) -> None:
    """Move a site's keys into a PKCS#11 token, re-wrapping every data key; recorded in the ledger.

    Example: ONSHORE_PIN=... onshore site custody migrate sakai --to pkcs11 --module
    /usr/lib/softhsm/libsofthsm2.so --token-label sakai --pin-env ONSHORE_PIN
    """
    from onshore.errors import UsageError
    from onshore.keys.pkcs11store import CustodyConfig
    from onshore.workspace import custody

    if to != "pkcs11":
        raise UsageError(f"--to {to!r}: only pkcs11 (a site moves from the file store into a token)")
    if (pin_env is None) == (pin_file is None):
        raise UsageError("give exactly one of --pin-env VAR or --pin-file FILE (never the PIN itself)")
    config = CustodyConfig(str(module.absolute()), token_label, pin_env,
                           str(pin_file.absolute()) if pin_file else None)
    with open_workspace() as ws:
        result = custody.migrate(ws, name, config)
    if json_:
        print_json(result)
        return
    console.print(f"site [bold]{esc(name)}[/] now keeps its keys in token {esc(token_label)} "
                  f"(serial {esc(result['token_serial'])}): {len(result['datasets'])} dataset and "
                  f"{len(result['models'])} model key(s) re-wrapped")


# `onshore site serve KIT` runs a site node (onshore.cli.parties): registered here, last, so that the
# site group is whole wherever it is built
from onshore.cli.parties import site_serve  # noqa: E402

site_app.command("serve")(site_serve)
