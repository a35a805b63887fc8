"""Data audit: descriptive statistics, anomalies, duplicates and a leakage-safe split, as a report."""

from covers.audit.anomalies import AnomalyRules, flag_anomalies
from covers.audit.audit import audit_source
from covers.audit.eda import describe, feature_table, image_stats

__all__ = ["AnomalyRules", "audit_source", "describe", "feature_table", "flag_anomalies", "image_stats"]
