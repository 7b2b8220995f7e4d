"""The SQL catalog of members, sites, embodiments, datasets, shards and key wraps."""
