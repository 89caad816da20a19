"""The typed errors fastload raises.

Every message says what failed, where (file, shard, block, record, byte offset) and, where
there is one, what to do about it.
"""

from __future__ import annotations

__all__ = [
    "FastloadError",
    "SchemaError",
    "ManifestError",
    "IncompleteDatasetError",
    "ShardFormatError",
    "ShardChecksumError",
    "CorruptRecordError",
    "MissingShardError",
    "ConvertError",
    "SourceRecordError",
    "RemoteReadError",
    "RemoteAccessError",
    "TooManyBadSamplesError",
    "DecodeError",
    "PlanStateError",
    "WorkerDiedError",
    "LoaderTimeoutError",
]


class FastloadError(Exception):
    """Base class of every error fastload raises on purpose."""


class SchemaError(FastloadError, ValueError):
    """A schema is invalid, or a record does not fit its schema."""


class ManifestError(FastloadError):
    """The dataset's manifest is unreadable or inconsistent."""


class IncompleteDatasetError(ManifestError, FileNotFoundError):
    """There is no manifest: the dataset was never finished (e.g. an interrupted convert)."""


class ShardFormatError(FastloadError):
    """A shard file is not a valid fastload shard (bad size, magic, version or index)."""


class ShardChecksumError(ShardFormatError):
    """A shard's content does not match the hash the manifest records for it."""


class CorruptRecordError(ShardFormatError):
    """A block or record failed its checksum or could not be decoded."""


class MissingShardError(FastloadError, FileNotFoundError):
    """A shard listed in the manifest does not exist."""


class ConvertError(FastloadError):
    """`fastload convert` cannot proceed (bad arguments, destination or source)."""


class SourceRecordError(ConvertError):
    """One input record is bad (corrupt image, line that breaks the schema, unsafe tar member).

    Under ``skip_bad`` such records are skipped and counted instead of failing the convert.
    """


class RemoteReadError(FastloadError, OSError):
    """A remote read failed for good: a permanent error, or transient ones past the retry
    budget. The message names the URL and byte range, the attempts and the last cause."""


class RemoteAccessError(RemoteReadError, PermissionError):
    """The object store refused access (HTTP 403): check the credentials."""


class TooManyBadSamplesError(FastloadError, RuntimeError):
    """The loader skipped more bad samples than its ``bad_samples`` budget allows."""


class DecodeError(FastloadError, ValueError):
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


class PlanStateError(FastloadError, ValueError):
    """A saved plan state does not belong to this dataset or is corrupted."""


class _BatchesError(FastloadError, RuntimeError):
    """A loader failure that concerns some batches: ``batches`` maps each batch's number in
    its epoch to its dataset indices (None where unknown), as the message names them."""

    def __init__(self, message: str, batches: dict | None = None) -> None:
        super().__init__(message)
        self.batches = dict(batches or {})


class WorkerDiedError(_BatchesError):
    """A loader worker exited without reporting an error (killed, crashed, out of memory);
    the message names the batches it was loading and their dataset indices."""


class LoaderTimeoutError(_BatchesError):
    """No batch arrived within the DataLoader's ``timeout``; the message names the batch
    waited for and its dataset indices."""
