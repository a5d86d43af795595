"""Tests of flowopt.flows: the Adam-family ODEs."""
