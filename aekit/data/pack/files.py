"""The file system under a pack, through tf.io.gfile (local paths and gs:// alike), and small text helpers."""

from __future__ import annotations

import hashlib
import os
import shlex
from pathlib import Path

from aekit.lazy import tf

HASH_CHUNK = 8 << 20


def _sha256(tf, path: str) -> str:
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _tf():
    return tf


def _folder_name(path: str | Path) -> str:
    """A folder as tf.io.gfile takes it: URLs (gs://...) unchanged, local paths expanded."""
    text = os.fspath(path)
    if "://" in text:
        return text.rstrip("/")
    return str(Path(text).expanduser())


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}"


def _q(text: str) -> str:
    return shlex.quote(text)


def _shape_text(shape) -> str:
    return "x".join(map(str, shape))


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return (str(text).strip().splitlines() or [type(exc).__name__])[0][:200]
