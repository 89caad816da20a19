"""Tests of fastload.DataLoader (helpers in ``loadertools``, fixtures in ``conftest``)."""
