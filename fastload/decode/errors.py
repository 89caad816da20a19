"""The error raised when an encoded image cannot be decoded (defined with the others in
fastload/errors.py, so that it is a ``FastloadError``)."""

from __future__ import annotations

from ..errors import DecodeError

__all__ = ["DecodeError"]
