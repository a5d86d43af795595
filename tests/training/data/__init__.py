"""Tests of flowopt.training.data: preparation through tfds, reading, batching."""
