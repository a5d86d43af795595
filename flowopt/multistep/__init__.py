"""Linear multistep methods: coefficients, Adams–Bashforth, and BDF with its approximate proximal solve.

* :mod:`~flowopt.multistep.coefficients`: the Adams–Bashforth and BDF tables, start-up choices.
* :mod:`~flowopt.multistep.adams_bashforth`: the explicit Adams–Bashforth integrator.
* :mod:`~flowopt.multistep.proximal`: gradient steps on the proximal subproblem.
* :mod:`~flowopt.multistep.bdf`: the approximate BDF integrator.
"""
