"""Residency: jurisdictions, usage policies compiled to Cedar, and the policy decision point."""
