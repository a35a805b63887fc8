"""The Optuna sweeper for Hydra (kept light: Hydra imports its plugin module at every start-up)."""
