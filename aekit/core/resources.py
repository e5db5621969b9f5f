"""Resource faults named for what they are: a full disk, a quota, a file-size limit, too many open files.

One table for every command that writes (training, export): what ran out, by errno, and the words
TensorFlow's file layer uses for it (it raises no OSError: a full disk comes as an OpError, a
ResourceExhaustedError like running out of memory, whose text holds the C library's words). Each
command adds the fix that applies to it.
"""

from __future__ import annotations

import errno

WHAT_RAN_OUT = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "a file-size limit was reached",
    errno.EMFILE: "this process has too many files open",
    errno.ENFILE: "the system has too many files open",
}
# The same failures as TensorFlow and converters word them (the longer words first).
WORDS = {
    "No space left on device": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
    "File too large": errno.EFBIG,
    "Too many open files in system": errno.ENFILE,
    "Too many open files": errno.EMFILE,
}
FILE_LIMIT_FIXES = {
    errno.EFBIG: "Raise the limit (ulimit -f unlimited)",
    errno.EMFILE: "Raise the limit (ulimit -n 4096)",
    errno.ENFILE: "Close other programs, or raise the system's limit (fs.file-max)",
}


def resource_code(exc: BaseException) -> int | None:
    """The errno of the disk, quota, file-size or open-files fault `exc` is (an OSError, or the words for
    one); None for anything else, out of memory included."""
    if isinstance(exc, OSError) and exc.errno in WHAT_RAN_OUT:
        return exc.errno
    if isinstance(exc, (OSError, MemoryError)):
        return None
    text = str(getattr(exc, "message", None) or exc)
    return next((code for words, code in WORDS.items() if words in text), None)
