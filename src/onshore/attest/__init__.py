"""Residency attestations: in-toto Statements in DSSE envelopes, signed and verified offline."""
