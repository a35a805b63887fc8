"""Serving: a promoted model (network, preprocessing, classes, gallery), its inputs, promotion and the pyfunc."""
