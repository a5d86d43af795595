"""Tests of flowopt.analysis: reference flows, GF–GD distances, Hessian spectra, stability regions."""
