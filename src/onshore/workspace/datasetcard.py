"""A LeRobot export's dataset card: ``README.md`` in the Hugging Face dataset-card layout.

A YAML header with what LeRobot's own card has (``license``, ``tags`` with ``LeRobot``,
``task_categories: [robotics]``, ``configs`` pointing at ``data/*/*.parquet``) plus an
``onshore`` entry with the export's provenance block; then, in plain words, whose data it is, the
usage policy that still binds whoever holds the copy, what the features are (with units) and how
Onshore recognises the data again. The card is written into the export, so it travels wherever the
folder is copied or pushed; LeRobot's ``aggregate_datasets`` and edit tools do not copy it (the
per-episode provenance and the fingerprints do that work, see ``telemetry/lerobot.py``).

The renderer is pure: ``render`` takes ``CardFacts``. Every scalar in the header is a JSON string
or number, which YAML reads as the same value, so no name or task can break the header.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from onshore.workspace.modelcard import LICENSE_NAME, _q, _words, clause_in_words

FILE = "README.md"


@dataclass
class CardFacts:
    """What a dataset card says. ``policy`` is ``UsagePolicy.to_json``; ``provenance`` the block
    the export carries (``telemetry/provenance.py``); ``features`` LeRobot's ``info.json``
    features; ``fps`` as written there."""

    dataset: str
    owner: str
    embodiment: str
    site: str
    jurisdiction: str
    policy: dict[str, Any]
    provenance: dict[str, Any]
    features: dict[str, dict[str, Any]]
    fps: int | float
    episodes: int
    frames: int
    tasks: list[str] = field(default_factory=list)


def policy_in_words(policy: dict[str, Any]) -> list[str]:
    """A dataset's usage policy as sentences about the data."""
    sites = "at any site there" if not policy.get("sites") else f"only at site(s) {_words(list(policy['sites']))}"
    redistribution = ("Another member may ingest it into their own datasets." if policy.get("redistribution") else
                      "No other member may ingest it (or an unchanged copy of any episode) as their own data: "
                      "Onshore refuses such an ingest by its provenance and by its content fingerprints.")
    derived = clause_in_words(str(policy.get("derived_models"))).replace("the model", "a model trained on it")
    return [f"It may be held and used only in {_words(list(policy.get('jurisdictions', [])))}, {sites}.",
            f"It may be used only for {_words(list(policy.get('purposes', [])))}.",
            f"Permission ends on {policy.get('expires')}.",
            redistribution,
            derived[0].upper() + derived[1:] + "."]


def _header(f: CardFacts) -> list[str]:
    tags = ["LeRobot", "onshore", "robotics", "data-residency", f"embodiment:{f.embodiment}",
            f"jurisdiction:{f.jurisdiction}"]
    return (["---", f"license: {_q('other')}", f"license_name: {_q(LICENSE_NAME)}", "tags:"]
            + [f"- {_q(t)}" for t in tags]
            + ["task_categories:", f"- {_q('robotics')}",
               "configs:", f"- config_name: {_q('default')}", f"  data_files: {_q('data/*/*.parquet')}",
               f"onshore: {json.dumps(f.provenance, ensure_ascii=False, sort_keys=True)}", "---"])


def _feature_rows(features: dict[str, dict[str, Any]]) -> list[str]:
    rows = ["| feature | dtype | shape | channels (unit) |", "|---|---|---|---|"]
    for key, ft in features.items():
        names, units = ft.get("names"), ft.get("units")
        if isinstance(names, list) and isinstance(units, list) and len(units) == len(names):
            chans = ", ".join(f"{n} ({u})" if u else str(n) for n, u in zip(names, units, strict=True))
        elif isinstance(names, list):
            chans = ", ".join(str(n) for n in names)
        else:
            chans = ""
        rows.append(f"| {key} | {ft.get('dtype')} | {ft.get('shape')} | {chans.replace('|', '/')} |")
    return rows


def render(f: CardFacts) -> str:
    """The card as Markdown with its YAML header (see the module docstring)."""
    has_env = "observation.environment_state" in f.features
    lines = _header(f) + [
        "", f"# {f.dataset} (LeRobotDataset v3.0, exported by Onshore)", "",
        f"Telemetry of embodiment `{f.embodiment}` owned by member `{f.owner}`: {f.episodes} episodes, "
        f"{f.frames} frames at {f.fps} frames per second, exported at site `{f.site}` ({f.jurisdiction}) "
        f"under ledger decision {f.provenance.get('decision_index')}.", "",
        "## Usage policy", "",
        "This copy is plaintext, but the owner's usage policy still binds whoever holds it:", ""]
    lines += [f"- {s}" for s in policy_in_words(f.policy)]
    lines += ["", "## Features", ""] + _feature_rows(f.features) + [""]
    if has_env:
        lines.append("`observation.state` holds the robot's own channels and `observation.environment_state` "
                     "the objects and goal it acts on (the embodiment's environment groups), so LeRobot's ACT "
                     "and Diffusion policies can train on it without images.")
    else:
        lines.append("The embodiment names no environment groups, so every state channel is in "
                     "`observation.state`; LeRobot's ACT and Diffusion policies need an image or "
                     "`observation.environment_state` and refuse this dataset as it is.")
    if f.tasks:
        lines += ["", "## Tasks", ""] + [f"- {_q(t)}" for t in f.tasks]
    lines += ["", "## Provenance", "",
              "The `onshore` entry above, the `onshore` block of `meta/info.json`, the Parquet metadata of each "
              "data file and the `onshore/provenance` column of `meta/episodes/` name the source dataset, its "
              "owner, the workspace and the ledger decision that let the data out. LeRobot's "
              "`aggregate_datasets` keeps the episode column; tools that rebuild episode metadata drop all of "
              "them, and then Onshore still recognises each unchanged episode by the fingerprint of its state "
              "and action values.", ""]
    return "\n".join(lines)
