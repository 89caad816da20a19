"""Tests of the on-disk format, and ``formattools``: index-encoded records and an independent
shard parser/forger, which the other test packages import too."""
