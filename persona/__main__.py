"""``python -m persona`` runs the CLI."""

from persona.cli import main

main()
