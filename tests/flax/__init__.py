"""Tests of flowopt.flax: step oracles, TrainState and the README's Flax recipes."""
