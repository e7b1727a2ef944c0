"""``heron bench``: a load generator for OpenAI- and Ollama-API chat endpoints.

Modules, in the order a run uses them:

- ``workload``: endpoints, request settings and the workloads (sequential, concurrent,
  multi-turn, sweep) as levels of users;
- ``client``: one streamed chat request, timed chunk by chunk, as a ``RequestRecord``;
- ``metrics``: percentiles and the per-level summary (TTFT, inter-token latency, tok/s);
- ``targets``: endpoints the run starts itself (``heron serve``, and peers via ``peers``);
- ``orchestrate``: levels x repeats x endpoints, alternating, with a progress callback;
- ``report`` and ``plot``: results.json, results.md and the PNG plots.

``docs/bench.md`` defines every workload and metric exactly.
"""
