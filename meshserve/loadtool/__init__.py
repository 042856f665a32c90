"""``meshserve bench``: a load generator for meshserve and Triton (the same KServe v2 protocol).

perf_analyzer's flags where they fit (``-m``, ``-u``, ``-i``, ``--concurrency-range``,
``--request-rate-range``, ``--measurement-interval``, ``-f``), genai-perf's figures in LLM mode
(time to first token, inter-token latency, output tokens/s).  The tool is a *client*: it imports
``tritonclient`` lazily and none of the services.  Modules, one job each:

- ``ranges``     ``start:end:step`` → the levels to sweep
- ``schedule``   send times for a request rate (constant or Poisson)
- ``latency``    percentiles and per-level summaries
- ``server_stats`` the statistics API's counters, before/after, as a queue/compute breakdown
- ``inputs``     request tensors from the model's metadata (random, zero, a JSON file)
- ``transport``  one request over gRPC or HTTP (tritonclient's asyncio clients)
- ``streaming``  one streamed LLM request (``generate_stream`` or OpenAI ``/v1/completions``)
- ``load``       the bounded load loops (fixed concurrency, fixed rate)
- ``pool``       the same loops in N processes, started together, results gathered
- ``report``     console table, CSV, JSON; ``plots`` the PNGs
- ``cli``        the ``bench`` subcommand
"""
