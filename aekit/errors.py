"""The one error type the CLI turns into a one-line message and exit code 2.

Raise it for anything the user can fix (bad paths, shapes, options); its message
states the problem and the fix. Bugs stay ordinary exceptions.
"""


class AekitError(Exception):
    """A problem with the user's input or environment, with the fix in its message."""
