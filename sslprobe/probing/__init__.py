"""`sslprobe probe`, `compare`, `predict`: linear and kNN probes on cached embeddings (see
docs/architecture.md)."""
