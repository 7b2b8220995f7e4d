"""The transparency ledger: signed entries, RFC 9162 Merkle tree, checkpoints, witnesses."""
