"""Many parties: provisioning, the coordinator, site nodes and the member's client, each a process
holding only its own keys (DESIGN.md, Parties). The embedded default does not import this package."""
