"""kNN on pretrained embeddings: faiss search and votes, and the kNN baseline model."""
