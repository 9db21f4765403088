"""The exporter's errors: each carries a one-line reason that the CLI prints as is (exit 2)."""


class ExportError(ValueError):
    """An export that cannot go ahead (bad checkpoint, existing output folder, ...)."""


class ParityError(ExportError):
    """An exported file whose outputs differ from the eager model's: the file is not shipped."""
