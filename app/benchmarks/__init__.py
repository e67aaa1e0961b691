"""Benchmarks runnable from the CLI (`lemoe bench ...`); scripts in bench/ call the same code."""
