"""`onshore provision`, `onshore coordinator serve`, `onshore site serve` (on the site group) and
`onshore party ...`: the consortium as separate processes, each started from its own startup kit (see
docs/deployment.md). None of these needs a workspace."""

from __future__ import annotations

from pathlib import Path

import typer

from onshore.cli.output import console, esc, print_json

coordinator_app = typer.Typer(help="The coordinator: catalog, ledger and decisions for the consortium.",
                              no_args_is_help=True)
profile_app = typer.Typer(help="Member profiles: a name for a member's startup kit.", no_args_is_help=True)
party_app = typer.Typer(help="Act as a party from its startup kit: ingest, copy, read, withdraw.",
                        no_args_is_help=True)

JSON = typer.Option(False, "--json", help="Print JSON only, for scripts.")
KIT = typer.Option(..., "--kit", metavar="DIR", help="This party's startup kit (from onshore provision).")


def provision_command(consortium: Path = typer.Argument(..., metavar="CONSORTIUM.toml",
                                                         help="The consortium file: parties, sites, jurisdictions."),
                      out: Path = typer.Option(..., "--out", metavar="DIR", help="A new folder for the kits."),
                      json_: bool = JSON) -> None:
    """Make the consortium CA and one startup kit per party (only that party's keys in each).

    Example: onshore provision consortium.toml --out kits/
    """
    from onshore.parties.consortium import load_consortium
    from onshore.parties.provision import provision

    folders = provision(load_consortium(consortium), out)
    if json_:
        print_json({k: str(v) for k, v in folders.items()})
        return
    for label, folder in folders.items():
        console.print(f"{esc(label)}: {esc(folder)}")
    console.print(f"CA key in {esc(out / 'ca')} (keep it offline); auditors use {esc(out / 'trust-root.json')}")


@coordinator_app.command("serve")
def coordinator_serve(kit: Path = typer.Argument(..., metavar="KIT", help="The coordinator's startup kit."),
                      db: str | None = typer.Option(None, "--db", metavar="URL",
                                                    help="Database (default: SQLite in the kit), e.g. "
                                                         "postgresql://onshore@db/coordinator."),
                      port: int | None = typer.Option(None, "--port", help="Override the kit's port.")) -> None:
    """Serve the coordinator over mutual TLS until stopped.

    Example: onshore coordinator serve kits/coordinator
    """
    from onshore.parties import coordinator
    from onshore.parties.kit import load_kit

    coordinator.serve(load_kit(kit, "coordinator"), db, port=port)


def site_serve(kit: Path = typer.Argument(..., metavar="KIT", help="The site's startup kit."),
               metrics_port: int | None = typer.Option(None, "--metrics-port", min=1, max=65535,
                                                       help="Also answer Prometheus scrapes on this port (HTTPS, "
                                                            "consortium certificate required).")) -> None:
    """Serve a site node (Arrow Flight over mutual TLS) until stopped.

    Example: onshore site serve kits/site-sakai --metrics-port 9701
    """
    from onshore.parties import site
    from onshore.parties.kit import load_kit

    k = load_kit(kit, "site")
    console.print(f"site {esc(k.name)} ({esc(k.sites[k.name].jurisdiction)}) at {esc(k.sites[k.name].flight)}")
    site.serve(k, metrics_port)


@party_app.command("ingest")
def party_ingest(name: str = typer.Argument(..., help="A new dataset name."),
                 files: list[Path] = typer.Argument(..., help="The member's Parquet files."),
                 site: str = typer.Option(..., "--site", help="The site node to store it."),
                 policy: Path | None = typer.Option(None, "--policy", metavar="FILE",
                                                    help="The usage policy (TOML); registers the dataset."),
                 embodiment: str | None = typer.Option(None, "--embodiment",
                                                       help="The embodiment the frames come from (recorded)."),
                 kit: Path = KIT, json_: bool = JSON) -> None:
    """As a member: register a dataset (consent signed here) and stream it to a site node.

    Example: onshore party ingest arms tel/*.parquet --site sakai --policy policy.toml --kit kits/member-x
    """
    from onshore.parties import actions
    from onshore.parties.kit import load_kit

    res = actions.ingest(load_kit(kit, "member"), name, files, site, policy, embodiment=embodiment)
    print_json(res) if json_ else console.print(f"ingested {esc(name)} at {esc(site)}: {res['frames']} frames")


@party_app.command("copy")
def party_copy(name: str = typer.Argument(..., help="The dataset."),
               source: str = typer.Option(..., "--from", metavar="SITE", help="The site holding it."),
               kit: Path = KIT, json_: bool = JSON) -> None:
    """As a site: copy a dataset here from another site, if its policy allows this site.

    Example: onshore party copy arms --from sakai --kit kits/site-tokyo
    """
    from onshore.parties import actions
    from onshore.parties.kit import load_kit

    res = actions.copy(load_kit(kit, "site"), name, source)
    print_json(res) if json_ else console.print(f"copied {esc(name)} to {esc(res['site'])}: {res['frames']} frames")


@party_app.command("read")
def party_read(name: str = typer.Argument(..., help="The dataset."),
               out: Path = typer.Option(..., "--out", metavar="FILE", help="Parquet file to write."),
               kit: Path = KIT) -> None:
    """As a site: read a dataset stored at this site (decision recorded at the coordinator).

    Example: onshore party read arms --out arms.parquet --kit kits/site-sakai
    """
    from onshore.files import check_output_file
    from onshore.parties import actions
    from onshore.parties.kit import load_kit

    check_output_file(out)
    console.print(f"read {actions.read(load_kit(kit, 'site'), name, out)} frames into {esc(out)}")


@party_app.command("withdraw")
def party_withdraw(name: str = typer.Argument(..., help="The dataset."),
                   sites: str = typer.Option(..., "--sites", help="Comma-separated sites that hold it."),
                   kit: Path = KIT, json_: bool = JSON) -> None:
    """As the owner: shred a dataset at each site holding it, then record the withdrawal.

    Example: onshore party withdraw arms --sites sakai,tokyo --kit kits/member-x
    """
    from onshore.parties import actions
    from onshore.parties.kit import load_kit

    res = actions.withdraw(load_kit(kit, "member"), name, [s for s in sites.split(",") if s])
    print_json(res) if json_ else console.print(f"withdrew {esc(name)}: shredded at "
                                                f"{', '.join(esc(s['site']) for s in res['shredded'])}")


@profile_app.command("add")
def profile_add(name: str = typer.Argument(..., help="A name for the profile, e.g. robotics."),
                kit: Path = KIT,
                coordinator: str | None = typer.Option(None, "--coordinator", metavar="URL",
                                                       help="The coordinator's https:// URL (default: the kit's).")
                ) -> None:
    """Name a member's startup kit, for `onshore dataset ingest ... --profile NAME`.

    Example: onshore profile add robotics --kit kits/member-kansai-robotics
    """
    from onshore.parties.profiles import add_profile, profiles_path

    k = add_profile(name, kit, coordinator)
    console.print(f"profile {esc(name)}: member {esc(k.name)} of {esc(k.consortium)}, "
                  f"coordinator {esc(coordinator or k.coordinator_url)} (in {esc(profiles_path())})")


@party_app.command("attest")
def party_attest(name: str = typer.Argument(..., help="The dataset."),
                 out: Path = typer.Option(..., "--out", metavar="FILE", help="Where to write the bundle."),
                 kit: Path = KIT) -> None:
    """As a site holding a dataset: sign its residency bundle, hand it to the coordinator for
    auditors, and write it here ('onshore verify FILE --trust trust-root.json' checks it offline).

    Example: onshore party attest arms --out arms.bundle.json --kit kits/site-sakai
    """
    from onshore.attest.bundle import write_bundle
    from onshore.files import check_output_file
    from onshore.parties import actions
    from onshore.parties.kit import load_kit

    check_output_file(out)
    bundle = actions.attest(load_kit(kit, "site"), name)
    write_bundle(bundle, out)
    console.print(f"bundle for {esc(name)} ({len(bundle['entries'])} entries) written to {esc(out)}")


@party_app.command("bundle")
def party_bundle(name: str = typer.Argument(..., help="The dataset."),
                 out: Path = typer.Option(..., "--out", metavar="FILE", help="Where to write the bundle."),
                 kit: Path = KIT) -> None:
    """As an auditor (or any party): fetch the newest bundle a site handed in for a dataset. The
    coordinator vouches for nothing: verify it offline with 'onshore verify FILE --trust ...'.

    Example: onshore party bundle arms --out arms.bundle.json --kit kits/auditor-auditor
    """
    from onshore.attest.bundle import write_bundle
    from onshore.files import check_output_file
    from onshore.parties.client import CoordinatorClient
    from onshore.parties.kit import load_kit

    check_output_file(out)
    write_bundle(CoordinatorClient(load_kit(kit)).bundle(name), out)
    console.print(f"bundle for {esc(name)} written to {esc(out)}")


@party_app.command("embodiment")
def party_embodiment(file: Path = typer.Argument(..., metavar="FILE.toml", help="The embodiment (machine type)."),
                     kit: Path = KIT, json_: bool = JSON) -> None:
    """As a member: register a machine type at the coordinator, so that site nodes validate every
    frame ingested under it (channels, widths, limits, order). Immutable once registered.

    Example: onshore party embodiment furnace.toml --kit kits/member-kansai-robotics
    """
    from onshore.parties.client import CoordinatorClient
    from onshore.parties.kit import load_kit
    from onshore.telemetry.embodiment import Embodiment

    res = CoordinatorClient(load_kit(kit, "member")).add_embodiment(Embodiment.from_toml(file))
    print_json(res) if json_ else console.print(
        f"embodiment {esc(res['embodiment'])} registered (sha256 {res['sha256'][:12]}…)"
        + ("" if res["index"] is not None else ", as it was already"))
