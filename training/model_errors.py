"""The errors of base-model loading, in one module that ``training.models`` and
``training.single_file`` both import (each re-exports its own name, so ``training.models.ModelError``
and ``training.single_file.SingleFileError`` stay where callers import them from)."""


class ModelError(ValueError):
    """The base model is missing, corrupt or of an unsupported kind."""


class SingleFileError(ModelError):
    """The single-file checkpoint cannot be used (reported by the CLI as one line)."""


def load_component(what: str, path: str, load):
    """``load()``, with any failure of diffusers / transformers (they raise many kinds for damaged
    folders) turned into one :class:`ModelError` sentence naming the component ``what`` and ``path``."""
    try:
        return load()
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"cannot load the {what} of {path}: {msg}") from None
