"""sslprobe's version: a leaf every module may import (the package root re-exports it; pyproject reads it here)."""

__version__ = "0.1.0"
