"""A model version's card: ``README.md`` in the Hugging Face model-card layout.

A YAML header (``license``, ``library_name``, ``pipeline_tag: robotics``, ``tags``, ``datasets``,
``base_model``, and ``model-index`` with the evaluation figures the ledger records), then what a
person deciding whether to use the model needs: what it was trained on (datasets, members,
embodiments, frames), where (site, jurisdiction), under which effective policy in plain words,
its status, its evaluations, intended use and limits, how to load the weights in plain PyTorch,
and how to check its provenance. Written with every ``onshore model export`` and printed by
``onshore model card``.

The renderer is pure: ``render`` takes the facts (``CardFacts``) that ``models.card_facts`` reads
from the catalog and the signed ledger. Every scalar in the header is written as a JSON string or
number, which YAML reads as the same value, so no name or tag can break the header.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

FILE = "README.md"
PIPELINE_TAG = "robotics"
LICENSE_NAME = "onshore-usage-policy"


@dataclass
class CardFacts:
    """What a card says: ``info`` is ``models.show_model``'s dict; ``frames`` the frames of each
    lineage dataset's shards the release read (dataset -> frames); ``evaluations`` the model's
    ``model.eval`` entry bodies with their ``index``; ``tasks`` the task texts it was trained on."""

    info: dict[str, Any]
    frames: dict[str, int] = field(default_factory=dict)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)


def _q(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _words(items: list[str], empty: str = "none") -> str:
    if not items:
        return empty
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def clause_in_words(clause: str) -> str:
    """A derived-model clause as a sentence about the model."""
    if clause == "keep":
        return "if a member withdraws consent for a dataset it was trained on, the model may keep running"
    if clause == "stop-serving":
        return ("if a member withdraws consent for a dataset it was trained on, the model must stop being served "
                "and may not be exported")
    if clause.startswith("retrain-by:"):
        return (f"if a member withdraws consent for a dataset it was trained on, the model must be retrained "
                f"without that data by {clause.split(':', 1)[1]}")
    return f"derived-model clause {clause!r}"


def policy_in_words(eff: dict[str, Any]) -> list[str]:
    """The effective policy (``EffectivePolicy.to_json``) as sentences."""
    where = _words(list(eff["jurisdictions"]), "no jurisdiction (the lineage's jurisdictions do not meet)")
    sites = ("at any site in those jurisdictions" if eff["sites"] is None
             else f"only at site(s) {_words(list(eff['sites']))}")
    return [f"It may be held, used and served only in {where}, {sites}.",
            f"It may be used only for {_words(list(eff['purposes']))}.",
            f"Its permission ends on {eff['expires']} (the earliest expiry of its training data).",
            clause_in_words(str(eff["derived_models"])).capitalize() + ".",
            "These rules are the intersection of the usage policies of every dataset in its lineage, compiled to "
            "Cedar and decided by Onshore for every copy, export, evaluation, fine-tune and serve."]


def _header(f: CardFacts) -> list[str]:
    info = f.info
    lineage = info["lineage"]
    datasets = sorted({d["dataset"] for level in lineage for d in level["datasets"]})
    embodiments = sorted({d["embodiment"] for level in lineage for d in level["datasets"] if d.get("embodiment")})
    tags = ["onshore", "robotics", "physical-ai", "data-residency"]
    tags += [f"jurisdiction:{j}" for j in info["effective_policy"]["jurisdictions"]]
    tags += [f"embodiment:{e}" for e in embodiments]
    tags += [f"{k}:{v}" for k, v in info.get("tags", {}).items()]
    out = ["---", f"license: {_q('other')}", f"license_name: {_q(LICENSE_NAME)}",
           f"library_name: {_q('onshore')}", f"pipeline_tag: {_q(PIPELINE_TAG)}", "tags:"]
    out += [f"- {_q(t)}" for t in tags]
    out += ["datasets:"] + [f"- {_q(d)}" for d in datasets]
    if info.get("base"):
        out.append(f"base_model: {_q(info['base'])}")
    results = []
    for e in f.evaluations:
        env, seed, index = str(e.get("env")), e.get("seed"), e.get("index")
        for task, r in sorted((e.get("tasks") or {}).items()):
            if not isinstance(r, dict) or not isinstance(r.get("success_rate"), int | float):
                continue
            label = f"success rate ({r.get('episodes')} episodes, ledger entry {index})"
            results += ["  - task:", f"      type: {_q(PIPELINE_TAG)}", f"      name: {_q(str(task))}",
                        "    dataset:", f"      type: {_q(env)}", f"      name: {_q(f'{env} seed {seed}')}",
                        "    metrics:", f"    - type: {_q('success_rate')}",
                        f"      value: {_q(float(r['success_rate']))}", f"      name: {_q(label)}"]
    if results:
        out += ["model-index:", f"- name: {_q(info['name'])}", "  results:"] + results
    out.append("---")
    return out


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


#: The heading of the card's loading section (tests run the snippet under it).
LOAD_HEADING = "## Load it in plain PyTorch"


def _load_snippet(f: CardFacts) -> list[str]:
    """Python that loads the export's weights into the network (a ``torch.nn.Module``) and computes
    the first command of an episode exactly as Onshore's own ``ModelPolicy.act`` does."""
    info = f.info
    embodiment = next((d["embodiment"] for level in info["lineage"] for d in level["datasets"]
                       if d.get("embodiment")), "EMBODIMENT")
    task = f.tasks[0] if f.tasks else "TASK"
    return ["```python", "import json", "", "import numpy as np", "import torch",
            "from safetensors.torch import load_file", "",
            "# the network's module; nothing else of Onshore (no workspace, no keys) is used",
            "from onshore.model.network import EmbodimentSpec, FoundationModel, ModelConfig", "",
            'tensors = load_file("model.safetensors")  # plain torch tensors: "weights.<parameter>", "task_vectors"',
            'with open("model.json") as f:',
            "    meta = json.load(f)  # config, embodiments (widths, limits, statistics), tasks",
            'model = FoundationModel(ModelConfig.from_json(meta["config"]),',
            '                        [EmbodimentSpec.from_json(e) for e in meta["embodiments"]])',
            'model.load_state_dict({k.removeprefix("weights."): v for k, v in tensors.items() '
            'if k.startswith("weights.")})',
            "model.eval()", "",
            f"embodiment, task = {_q(embodiment)}, {_q(task)}",
            "spec = model.specs[embodiment]",
            'task_vector = tensors["task_vectors"][meta["tasks"].index(task)][None]  # [1, text_dim]',
            "state = np.zeros(spec.state_dim, dtype=np.float32)  # the machine's state now, in its units",
            "k = model.config.history  # at an episode's start the history is the first state, k times",
            "hist = torch.from_numpy(np.tile(spec.normalise_state(state), (k, 1)))[None]  # [1, k, state_dim]",
            "feedback = ()",
            "if model.config.action_feedback:  # trained with the actions applied before: none yet",
            "    feedback = (torch.zeros(1, k, spec.action_dim), torch.zeros(1, k))",
            "with torch.inference_mode():",
            "    chunk, next_state = model.predict(embodiment, hist, task_vector, *feedback)  # [1, H, action_dim]",
            "action = spec.unscale_action(np.clip(chunk[0, 0].numpy(), -1.0, 1.0))  # in the machine's units",
            "```"]


def render(f: CardFacts) -> str:
    """The card as Markdown with its YAML header (see the module docstring)."""
    info = f.info
    name, version = info.get("model_name", info["name"]), info.get("version", 1)
    eff, status = info["effective_policy"], info["status"]
    lines = _header(f)
    lines += ["", f"# {name} (version {version})", ""]
    if info.get("description"):
        lines += [info["description"], ""]
    facts = [f"Model id `{info['name']}`, version {version} of {_words([str(v) for v in info.get('versions', [1])])}"]
    if info.get("aliases"):
        facts.append(f"aliases: {', '.join(info['aliases'])}")
    if info.get("archived"):
        facts.append("**archived**: kept for the record, not served or fine-tuned")
    lines += ["; ".join(facts) + ".", ""]
    lines += ["## Model details", "",
              f"- Architecture: Onshore cross-embodiment transformer, size `{info['size']}`, "
              f"{info['parameters']:,} parameters",
              f"- Training: {info['steps']} steps on {info['world_size']} process(es), for the purpose "
              f"`{info['purpose']}`" + (f", fine-tuned from `{info['base']}`" if info.get("base") else ""),
              f"- Trained at site `{info['site']}` ({info['jurisdiction']}), released in ledger entry "
              f"{info['ledger_index']} on {info['created_at']}",
              "- Held at: " + ", ".join(f"`{s['site']}` ({s['jurisdiction']})" for s in info["sites"])]
    lines += [f"- `{n}` sha256 `{d['sha256']}`" for n, d in sorted(info["files"].items())]
    lines += ["", "## Training data", "",
              "| model | dataset | member | embodiment | shards | frames |", "|---|---|---|---|---|---|"]
    for level in info["lineage"]:
        for d in level["datasets"]:
            frames = f.frames.get(d["dataset"]) if level["model"] == info["name"] else None
            lines.append(f"| {level['model']} | {d['dataset']} | {d['owner']} | {d.get('embodiment') or ''} | "
                         f"{len(d['shards'])} | {'' if frames is None else f'{frames:,}'} |")
    lines += ["", "Members: " + _words(list(info["members"])) + "." + (
        " Rows of other models are the base models it was fine-tuned from; their data is part of this model's "
        "lineage." if len(info["lineage"]) > 1 else ""), ""]
    lines += ["## Where it may be used (effective policy)", ""] + [f"- {s}" for s in policy_in_words(eff)]
    lines += ["", f"Status now: **{status['label']}**" + ("" if not status["reasons"] else ": "
                                                            + "; ".join(status["reasons"])), ""]
    lines += ["## Evaluation", ""]
    if f.evaluations:
        lines += ["Figures as recorded in the ledger (`model.eval` entries, signed by the evaluating site):", "",
                  "| environment | seed | task | success rate | episodes | site | ledger entry |",
                  "|---|---|---|---|---|---|---|"]
        for e in f.evaluations:
            for task, r in sorted((e.get("tasks") or {}).items()):
                rate = r.get("success_rate") if isinstance(r, dict) else None
                lines.append(f"| {_cell(e.get('env'))} | {_cell(e.get('seed'))} | {_cell(task)} | "
                             f"{'' if rate is None else f'{float(rate):.3f}'} | "
                             f"{_cell(r.get('episodes', '') if isinstance(r, dict) else '')} | "
                             f"{_cell(e.get('site'))} | {e.get('index')} |")
    else:
        lines.append("No evaluation is recorded for this version (`onshore eval ... --policy MODEL` records one).")
    embodiments = sorted({d["embodiment"] for level in info["lineage"] for d in level["datasets"]
                          if d.get("embodiment")})
    lines += ["", "## Intended use and limits", "",
              f"- Intended: closed-loop control of the machine type(s) {_words(embodiments)} for "
              f"{_words(list(eff['purposes']))}, served next to the machine by `onshore serve` behind its safety "
              "envelope (limits, rate limits, hold on NaN, watchdog, latched e-stop).",
              "- It acts only for the embodiments above; another machine needs a fine-tune on its data first.",
              "- It knows only the frames listed above: expect it to fail outside the states and tasks they cover. "
              "Check it in simulation or in shadow mode (`onshore shadow`) before it drives a machine.",
              "- The model is not a safety function; keep the machine's own interlocks.",
              "- An exported copy is plaintext: the effective policy above still binds whoever holds it, but "
              "outside Onshore's stores nothing enforces it.", ""]
    lines += [LOAD_HEADING, "",
              "The export folder holds `model.safetensors` (weights, no pickle), `model.json` (configuration, "
              "embodiments with their normalisation, tasks), this card, and `onshore-export.json` (the "
              "manifest: the model version, its `model.release` and `model.export` ledger entries and every "
              "file's SHA-256). The weights are plaintext: no decryption step. In plain PyTorch, one control "
              "step at the start of an episode:", ""] + _load_snippet(f)
    lines += ["", "This is the first command Onshore's own policy gives for that state and task. Over an episode, "
              "keep the last `history` normalised states and blend the overlapping action chunks (ACT's temporal "
              "ensembling), as `onshore.model.policy.ModelPolicy` does, and put the machine's safety envelope "
              "after it.", "",
              "With Onshore, at a site its effective policy allows, the folder is used as it is: "
              "`onshore eval --env ENV --policy ./FOLDER --site SITE` and `onshore serve --from ./FOLDER --site "
              "SITE`. Both check every file against the manifest and the workspace's signed ledger, and decide "
              "the use like one of the model by name, before anything is loaded; keep the folder as exported "
              "(no added, changed or linked files)."]
    lines += ["", "## Provenance", "",
              f"Where it was trained and on whose data is attested by its training site: `onshore attest model "
              f"{info['name']} -o bundle.json`, checked offline with `onshore verify bundle.json --trust-root "
              "trust.json`. The digests above are those of its `model.release` ledger entry.", ""]
    return "\n".join(lines)
