"""Tests of flowopt.training: the train loop, models, optimizers by name, the demo."""
