"""Raw datasets → verified arrays → Parquet shards → tensors."""
