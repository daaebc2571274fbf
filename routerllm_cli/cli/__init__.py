"""Typer glue: the only package that knows about the command line."""
