"""The library's own exception types: every error it raises on purpose is a PPTError.

The command line (ppt_cli.main.run_tool) prints one line for each and exits 2, or 1 for a TrainingError.
"""


class PPTError(Exception):
    """Raised on purpose by ms-ppt: bad options or inputs, an unreadable checkpoint or image, a failed run."""


class UsageError(PPTError, ValueError):
    """Bad options or inputs."""


class OutputError(PPTError, ValueError):
    """An output path that cannot or must not be written."""


class OutputExistsError(OutputError, FileExistsError):
    """The output exists and --force (force=True) was not given."""


class ImageError(PPTError, ValueError):
    """An image file that cannot be decoded."""


class CheckpointError(PPTError, ValueError):
    """A checkpoint that cannot be read, or that does not fit the model."""


class TrainingError(PPTError, RuntimeError):
    """Training cannot go on (a non-finite loss); the last checkpoint written is intact."""
