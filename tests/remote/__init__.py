"""Tests against real object stores on loopback: moto's S3 server and a GCS emulator (see
``conftest``), with a fault-injecting proxy (``faultproxy``)."""
