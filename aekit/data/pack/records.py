"""TFRecord framing by hand: the byte size of a shard and the first record's position, checked without parsing."""

from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING

from aekit.data.pack.files import _first_line, _shape_text, _tf
from aekit.data.pack.schema import RECORD_FRAMING

if TYPE_CHECKING:
    from aekit.data.pack.schema import ShardRecord


def _first(images, _index):
    return images


def _read_records(path):
    return _tf().data.TFRecordDataset(path)


def _starts(records: list[ShardRecord]) -> list[int]:
    """The index in its split of each shard's first image."""
    starts, first = [], 0
    for record in records:
        starts.append(first)
        first += record.images
    return starts


def _varint_bytes(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def _field_bytes(n: int) -> int:
    """A length-delimited protobuf field of n bytes with a one-byte tag."""
    return 1 + _varint_bytes(n) + n


def _record_bytes(image_bytes: int, index: int) -> int:
    """The TFRecord of one image as `_write_shard` writes it: Example{image: bytes_list, index: int64_list}."""
    image = _field_bytes(_field_bytes(_field_bytes(image_bytes)))  # Feature{bytes_list{value: [image]}} as a map value
    position = _field_bytes(_field_bytes(_field_bytes(_varint_bytes(index))))  # Feature{int64_list{packed [index]}}
    entries = _field_bytes(_field_bytes(len("image")) + image) + _field_bytes(_field_bytes(len("index")) + position)
    return RECORD_FRAMING + _field_bytes(entries)


def _shard_bytes(first: int, count: int, image_bytes: int) -> int:
    """The size of a shard of `count` images of `image_bytes` bytes, indexed from `first` (a record's size
    depends on its index only through the varint length of the index)."""
    total, start, stop, digits = 0, first, first + count, 1
    while start < stop:
        end = min(stop, 1 << (7 * digits))  # the indices whose varint takes `digits` bytes end here
        if start < end:
            total += (end - start) * _record_bytes(image_bytes, start)
            start = end
        digits += 1
    return total


def _shard_problem(tf, path: str, record: ShardRecord, first: int, image_shape) -> str | None:
    """What is wrong with a shard, of `record.bytes` bytes, as the `record.images` images of `image_shape`
    from image `first` of its split: its size is not theirs, or its first record is not the first of them.
    None when nothing is. Reads the first record only."""
    image_bytes, shape = math.prod(image_shape), _shape_text(image_shape)
    expected = _shard_bytes(first, record.images, image_bytes)
    if record.bytes != expected:
        return f"is {record.bytes:,} bytes, not the {expected:,} that {record.images:,} images of {shape} take"
    try:
        head = _first_record(tf, path, record.bytes)
    except tf.errors.OpError as exc:
        return f"cannot be read ({_first_line(exc)})"
    if head is None:
        return "does not start with an aekit image record"
    if head != (image_bytes, first):
        return f"starts with image {head[1]} of {head[0]:,} bytes, not image {first} of {image_bytes:,} bytes ({shape})"
    return None


def _first_record(tf, path: str, limit: int) -> tuple[int, int] | None:
    """(image bytes, index) of a shard's first record, reading just it; None when it does not start with one."""
    from google.protobuf.message import DecodeError

    with tf.io.gfile.GFile(path, "rb") as f:
        header = f.read(12)  # payload length (uint64), its crc
        if len(header) < 12:
            return None
        (length,) = struct.unpack("<Q", header[:8])
        if length > limit:
            return None
        payload = f.read(length)
    if len(payload) != length:
        return None
    try:
        feature = tf.train.Example.FromString(payload).features.feature
    except (DecodeError, ValueError):
        return None
    if "image" not in feature or "index" not in feature:
        return None
    images, index = feature["image"].bytes_list.value, feature["index"].int64_list.value
    if len(images) != 1 or len(index) != 1:
        return None
    return len(images[0]), int(index[0])
