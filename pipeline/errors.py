"""The one exception type a stage raises for bad input: its message names the file, key or value at fault."""


class PipelineError(Exception):
    """Bad input or configuration; the message says what and where. Stages exit with it, writing nothing."""
