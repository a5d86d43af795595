"""Flows beyond the plain gradient flow: the momentum and adaptive-algorithm ODEs.

* :mod:`~flowopt.flows.family`: the system of Belotto da Silva & Gazeau
  (heavy ball, Nesterov, AdaGrad, RMSProp, Adam) as one integrator.
"""
