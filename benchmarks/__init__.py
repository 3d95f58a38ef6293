"""Runnable comparisons of czo-kit against the libraries a module would otherwise use."""
