"""The monitoring page: global results per round and the heatmap gallery, read-only from storage."""
