"""The one error type the CLI turns into a one-line message and exit code 2, and its kinds for Python callers.

Raise AekitError for anything the user can fix (bad paths, shapes, options); its message
states the problem and the fix. Bugs stay ordinary exceptions. The Python API (aekit.api)
re-raises what the library raises as the subclasses below, so a notebook can catch a kind:
"bad argument" apart from "bad run folder" apart from "the export did not match Keras".
"""


class AekitError(Exception):
    """A problem with the user's input or environment, with the fix in its message."""


class InputError(AekitError, ValueError):
    """The data or an argument is wrong: a shape, a range, a value, a batch that does not fit the data."""


class UnknownOptionError(InputError, TypeError):
    """A keyword argument the call does not take; the message lists the ones it does."""


class RunFolderError(AekitError):
    """A run folder is missing, unfinished, not an aekit run, damaged, in use, or holds other files."""


class ExportError(AekitError):
    """An exported file failed its check against Keras (or could not be made); `result` holds every entry."""

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result  # the aekit.exporting.export.ExportResult, failed entries included
