"""Tests of experiments/: the study runner and each study."""
