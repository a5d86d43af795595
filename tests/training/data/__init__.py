"""Tests of flowopt.training.data: sources, caches, batching (no network)."""
