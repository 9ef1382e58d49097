"""``python -m persona`` runs the CLI."""

from persona.cli import main

if __name__ == "__main__":  # a spawned process (a parallel verify) imports this module too
    main()
