"""Tests that run real frameworks (PyTorch Lightning, Hugging Face Accelerate) with fastload's
DataLoader: in fresh interpreters with deadlines, on loopback."""
