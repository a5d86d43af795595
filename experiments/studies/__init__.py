"""One module per study; each defines ``STUDY``, an :class:`experiments.runner.Study`."""
