"""Engine replicas on a Ray cluster: ``heron serve MODEL --ray-address ADDRESS``.

The HTTP process holds an authenticated ``multiprocessing.connection.Listener``
(``listener``). ``placement`` connects to the Ray cluster, reserves one placement-group bundle
per replica and starts one ``EngineActor`` (``actor``) in each; the actor dials back with
``multiprocessing.connection.Client`` and runs ``heron.engine.core.run_engine_core`` on that
connection, exactly as a local engine process runs it on its pipe. ``remote`` wraps each
connection as an ``EngineReplica`` for the data-parallel client's router. Ray restarts an
actor whose process died (``max_restarts``); the restarted actor dials back and the router
takes it in again.

Nothing in this package is imported unless ``--ray-address`` is given, and only
``placement`` and ``actor`` import ray.
"""
