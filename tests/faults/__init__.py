"""Fault injection across the library: bad input, damaged files, killed runs (the README's Reliability section)."""
