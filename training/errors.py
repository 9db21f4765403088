"""The CLI's error type, in a module of its own so that subcommand modules (lr-find, launch, counts)
can raise it without importing training.cli, which imports them."""


class CLIError(Exception):
    """A user mistake: printed as one line, exit code 2."""
