"""Stale proofs: `onshore verify --max-age` refuses a bundle whose checkpoint was witnessed too long ago."""

from __future__ import annotations

import datetime as dt

import pytest

from onshore.attest.verify import verify_bundle
from onshore.cli.app import main
from onshore.ledger import checkpoint as ckpt
from test_attest import Attested, attested, failing  # noqa: F401


def _witnessed_at(a: Attested) -> dt.datetime:
    note = a.doc()["checkpoint"]
    ts = max(c.timestamp for c in ckpt.verified_cosignatures(note, [w.vkey for w in a.trust.witnesses]))
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def test_max_age_refuses_an_old_checkpoint(attested: Attested) -> None:  # noqa: F811
    seen = _witnessed_at(attested)
    fresh = verify_bundle(attested.bundle, attested.trust, 2, dt.timedelta(days=30), now=seen + dt.timedelta(days=1))
    assert fresh.ok, fresh.failed
    stale = verify_bundle(attested.bundle, attested.trust, 2, dt.timedelta(days=30), now=seen + dt.timedelta(days=31))
    failing(stale, "freshness", "more than the maximum age 30 days")
    assert verify_bundle(attested.bundle, attested.trust, 2).check("freshness").passed


def test_max_age_needs_a_witnessed_checkpoint(attested: Attested) -> None:  # noqa: F811
    from dataclasses import replace

    untrusting = replace(attested.trust, witnesses=[])
    failing(verify_bundle(attested.bundle, untrusting, 0, dt.timedelta(days=365)), "freshness",
            "no trust-root witness cosigned")


def test_cli_max_age(attested: Attested, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    args = ["verify", str(attested.scratch / "bundle.json"), "--trust-root", str(attested.trust_path)]
    assert main([*args, "--max-age", "30d"]) == 0
    assert main([*args, "--max-age", "0s"]) == 1
    assert "freshness" in capsys.readouterr().err
    assert main([*args, "--max-age", "soon"]) == 1
    assert "--max-age 'soon'" in capsys.readouterr().err
