"""Runs: the only layer that reads the composed Hydra config and hands explicit values to the library."""
