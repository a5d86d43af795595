"""Explicit Runge–Kutta methods: tableaus, their stages, and step-size control.

* :mod:`~flowopt.rk.tableau`: :class:`~flowopt.ButcherTableau`, validated by its order conditions.
* :mod:`~flowopt.rk.tableaus`: the named tableaus (``flowopt.tableaus``).
* :mod:`~flowopt.rk.stages`: stage evaluation for any vector field; the fixed-step integrator.
* :mod:`~flowopt.rk.step_size`: the scaled error norm and the PI controller.
* :mod:`~flowopt.rk.adaptive`: embedded-pair attempts and the integrator that chooses its steps.
"""
