"""flowopt's studies: one entry point each, ``flowopt-experiment STUDY --config {smoke,cpu,gpu}``."""
