"""Tests of the benchmarks/ suite."""
