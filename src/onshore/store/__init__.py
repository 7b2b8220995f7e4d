"""Resident storage: encrypted, content-addressed Parquet shards in a site's folder."""
