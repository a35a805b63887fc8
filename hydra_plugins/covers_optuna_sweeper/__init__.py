"""Hydra plugin registration for the covers Optuna sweeper (logic lives in covers.sweep)."""
