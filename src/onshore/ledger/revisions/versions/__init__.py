"""The ledger's revision scripts, oldest first by their ids."""
