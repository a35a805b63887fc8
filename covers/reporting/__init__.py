"""Reporting: a run's figures, a sweep's validation/learning curves, and docs/results.md from MLflow."""
