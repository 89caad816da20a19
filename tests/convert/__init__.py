"""Tests of fastload.convert (one module per source, plus the runner and the CLI)."""
