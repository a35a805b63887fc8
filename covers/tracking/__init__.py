"""Tracking in MLflow: stores, run life cycle, params/metrics/artifacts, and the model registry."""
