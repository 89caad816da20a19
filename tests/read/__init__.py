"""Tests of the read layer (fastload.read): what the loader may ask of a dataset."""
