"""One package per study: ``experiments/studies/<study>/`` defines ``STUDY``, an :class:`experiments.runner.Study`,
and ships its configurations as ``configs/<name>.json`` beside it (study ``a-b`` is the package ``a_b``)."""
