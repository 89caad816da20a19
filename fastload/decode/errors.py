"""The error raised when an encoded image cannot be decoded."""

from __future__ import annotations

__all__ = ["DecodeError"]


class DecodeError(ValueError):
    """An image could not be decoded (corrupt, truncated, unsupported, or not the size stated).

    ``index`` is the image's position in the batch passed to ``decode_batch_into`` (None from
    ``decode_crop_into``); the loader adds the record index and shard to the message.
    """

    def __init__(self, message: str, index: int | None = None) -> None:
        self.index = index
        self.reason = message
        super().__init__(message if index is None else f"image {index} of the batch: {message}")

    def with_index(self, index: int) -> DecodeError:
        """A copy of this error naming the image's position in its batch."""
        err = DecodeError(self.reason, index)
        err.__cause__ = self.__cause__
        return err
