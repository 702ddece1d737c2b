"""`sslprobe pretrain`: BYOL on a folder of images (see docs/architecture.md)."""
