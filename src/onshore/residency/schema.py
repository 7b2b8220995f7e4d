"""The shipped Cedar schema (``onshore.cedarschema``) and validation of compiled policy sets.

The compiler in ``policy.py`` writes Cedar text; the schema says which entity types, attributes,
actions and context fields that text may use. Every policy set the decision point is built from is
validated with Cedar's own validator (cedarpy), so a compiler change that names an attribute
Onshore never supplies fails loudly instead of silently never matching.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from onshore.errors import OnshoreError

SCHEMA_FILE = "onshore.cedarschema"


@cache
def schema_text() -> str:
    """The Cedar schema, as shipped in the package."""
    return resources.files("onshore.residency").joinpath(SCHEMA_FILE).read_text()


def validation_errors(policy_text: str) -> list[str]:
    """Cedar's validation errors for ``policy_text`` against the schema (empty when it validates)."""
    import cedarpy  # here, as in pdp: commands that only list never build a policy set

    result = cedarpy.validate_policies(policy_text, schema_text())
    return [] if result.validation_passed else [str(getattr(e, "error", e)) for e in result.errors]


def validate_policy_set(policy_text: str) -> None:
    """Raise OnshoreError (an internal error: the compiler wrote something the schema forbids)."""
    errors = validation_errors(policy_text)
    if errors:
        raise OnshoreError(f"internal error: compiled Cedar policies do not validate against {SCHEMA_FILE}: "
                           + "; ".join(errors[:3]))
