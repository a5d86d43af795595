"""Tests of flowopt.rk: tableaus, explicit Runge–Kutta optimizers, adaptive pairs and step-size control."""
