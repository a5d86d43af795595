"""flowopt's speed and memory benchmarks: every figure a ratio measured in one run."""
