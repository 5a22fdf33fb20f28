"""Subcommands of the ``fgp`` CLI, one module each."""
