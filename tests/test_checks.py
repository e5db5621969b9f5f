"""The one definition of what a JSON value must be (aekit.core.checks), shared by every reader of aekit's files."""

import math

import pytest

from aekit.core.checks import is_count, is_fraction, is_number, is_plain_name, is_positive, is_sha256, is_whole


@pytest.mark.parametrize(
    "check, good, bad",
    [
        (is_number, [0, -2, 1.5, 10**30], [True, "1", None, math.nan, math.inf, 10**400]),
        (is_whole, [0, 7, -3], [True, 1.0, "2", None]),
        (is_count, [1, 4096], [0, -1, True, 2.0]),
        (is_positive, [1e-9, 3], [0, -1, math.inf, math.nan, False]),
        (is_fraction, [0.1, 0.999], [0, 1, 1.0, math.nan, True, "0.5"]),
        (is_plain_name, ["train-00000-of-00002.tfrecord", "a.b"], ["", ".", "../x", "a/b", "a\\b", "c:x", "/abs", "a\0", 3]),
        (is_sha256, ["0" * 64, "ab" * 32], ["A" * 64, "0" * 63, None, "g" * 64]),
    ],
)
def test_each_check_takes_what_aekit_writes_and_nothing_else(check, good, bad):
    assert all(check(v) for v in good), [v for v in good if not check(v)]
    assert not any(check(v) for v in bad), [v for v in bad if check(v)]


def test_ranges_and_non_finite_history_numbers():
    assert is_whole(5, 0, 5) and not is_whole(6, 0, 5) and not is_whole(-1, 0)
    assert is_number(math.nan, finite=False) and not is_number(True, finite=False)
