"""Executors run a plan's jobs. `local`: a pool of worker processes on this machine."""
