"""What a value in a JSON file aekit reads must be: one definition of each check, for every reader.

config.json (aekit.core.recipe), history.json (aekit.core.runs), manifest.json (aekit.core.manifest),
a pack's dataset.json (aekit.data.pack.schema), threshold files (aekit.edge.thresholds) and TF_CONFIG
(aekit.training.distribute) each say in their own words what is wrong with a file; what counts as a
number, a count, a fraction, a file name or a sha256 is decided here. A JSON `true` is never a number
(Python's bool is an int), and NaN or infinity is never a finite number.

    >>> is_count(3), is_count(True), is_fraction(0.1), is_plain_name("../x")
    (True, False, True, False)
"""

from __future__ import annotations

import math
import os
import re

SHA256_TEXT = re.compile("[0-9a-f]{64}")


def is_number(value, finite: bool = True) -> bool:
    """A JSON number (int or float, not a bool); with `finite`, neither NaN nor infinite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return not finite or math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def is_whole(value, low: int | None = None, high: int | None = None) -> bool:
    """A JSON whole number (not a bool), within [low, high] where given."""
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def is_count(value) -> bool:
    """A whole number of 1 or more (images, bytes, shards)."""
    return is_whole(value, low=1)


def is_positive(value) -> bool:
    """A finite number above 0."""
    return is_number(value) and value > 0


def is_fraction(value) -> bool:
    """A number strictly between 0 and 1 (NaN is not)."""
    return is_number(value) and 0.0 < value < 1.0


def is_plain_name(value) -> bool:
    """A file name inside its folder: text, not empty or ".", with no separator, "..", drive or NUL."""
    return (
        isinstance(value, str)
        and value not in ("", ".")
        and not any(part in value for part in ("/", "\\", "..", ":", "\0"))
        and not os.path.isabs(value)
    )


def is_sha256(value) -> bool:
    """64 lowercase hex digits."""
    return isinstance(value, str) and SHA256_TEXT.fullmatch(value) is not None
