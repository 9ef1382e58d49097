"""The ``persona`` command line: thin commands that parse, call and print (Rich)."""

from persona.cli.main import app, main

__all__ = ["app", "main"]
