"""Embeddings: the in-process models (MiniLM, the static model), served embeddings, the run's
vector cache, and the Dask runner's client side."""
