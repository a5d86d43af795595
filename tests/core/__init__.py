"""Tests of flowopt.core: the integrator route, the oracle contract, checks and trees."""
