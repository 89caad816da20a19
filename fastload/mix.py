"""``fastload.Mix`` at its first import path (it lives in :mod:`fastload.read.mix`)."""

from .read.mix import Mix, fingerprint_of

__all__ = ["Mix", "fingerprint_of"]
