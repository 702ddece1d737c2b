"""Images: safe decoding, discovery of folders and datasets, and the uint8 transforms (shared by
pretraining and extraction; see docs/architecture.md)."""
