"""Sharded language models: a Llama-family decoder cut into contiguous layer ranges ("stages"), each
held by one worker process, chained over gRPC (see ``docs/llm.md``)."""
