"""The catalog's revision scripts, oldest first by their ids."""
