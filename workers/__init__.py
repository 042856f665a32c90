"""Worker service: one process per model instance; loads a model through a backend and executes batches."""
