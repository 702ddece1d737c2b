"""``python -m sslprobe`` runs the command line."""
from sslprobe.cli import main

main()
