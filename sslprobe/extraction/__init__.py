"""`sslprobe extract`: embeddings of a folder through a frozen backbone, into the cache (see
docs/architecture.md)."""
