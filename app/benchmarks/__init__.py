"""Benchmarks runnable from the CLI (`lemoe bench ...`)."""
