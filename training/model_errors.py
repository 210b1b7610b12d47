"""The errors of base-model loading, in one module that ``training.models`` and
``training.single_file`` both import (each re-exports its own name, so ``training.models.ModelError``
and ``training.single_file.SingleFileError`` stay where callers import them from)."""


class ModelError(ValueError):
    """The base model is missing, corrupt or of an unsupported kind."""


class SingleFileError(ModelError):
    """The single-file checkpoint cannot be used (reported by the CLI as one line)."""
