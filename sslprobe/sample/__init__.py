"""The built-in sample data (see sslprobe.demo)."""
