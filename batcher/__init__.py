"""Batcher service: takes requests off NATS, forms dynamic batches per model, dispatches to workers."""
