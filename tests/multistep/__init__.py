"""Tests of flowopt.multistep: Adams–Bashforth and approximate BDF."""
