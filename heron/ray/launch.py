"""``heron serve MODEL --ray-address ADDRESS``: the server with its replicas on a Ray cluster.

The model is resolved here as ``heron serve`` resolves it, the replicas are placed and every
node is checked for the model's files, and only then does the HTTP server start, with the
placement's factory behind its data-parallel client. One model runs on the cluster at a time
(``max_loaded_models`` is 1): each actor runs one engine.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

from heron import env
from heron.server.serve import ServeConfig, check_bind, command_line_model, run_server
from heron.store.store import ModelStore

logger = logging.getLogger(__name__)


def run_server_on_ray(
    cfg: ServeConfig, address: str, cpus_per_replica: int, listen: str | None
) -> int:
    """Place ``cfg.data_parallel_size`` replicas of ``cfg.model`` on the cluster at
    ``address`` and serve until stopped; returns ``run_server``'s status. ``listen``:
    ``HOST[:PORT]`` the actors dial back to (None: this node's cluster IP, a free port).
    Raises ValueError (bad option, unreachable or too small cluster, a node without the
    model) or FileNotFoundError (no such model)."""
    if cfg.model is None:
        raise ValueError("--ray-address places the replicas of a MODEL: name one")
    if cfg.engine.tensor_parallel_size != 1:
        raise ValueError("--tensor-parallel-size does not combine with --ray-address yet")
    try:
        from heron.ray.placement import RayPlacement, RayReplicas
    except ModuleNotFoundError as exc:
        if exc.name != "ray":
            raise
        raise ValueError("--ray-address needs Ray: pip install 'heron[ray]'") from None
    check_bind(cfg)  # before the cluster work, so a refused bind fails at once
    host, port = parse_listen(listen)
    store = ModelStore(Path(cfg.models_dir) if cfg.models_dir else None)
    spec = command_line_model(store, cfg.model, cfg.served_model_name)
    placement = RayPlacement(address, cfg.data_parallel_size, cpus_per_replica, host, port)
    replicas = RayReplicas.start(placement, spec.path)
    try:
        cfg.replica_factory = replicas.factory
        cfg.max_loaded_models = 1
        return run_server(cfg)
    finally:
        replicas.close()


def parse_listen(listen: str | None) -> tuple[str | None, int]:
    """``HOST[:PORT]`` -> (host, port); None -> (None, 0). Warns about a public address: the
    listener is authenticated, but it belongs on the cluster's private network."""
    if listen is None:
        return None, 0
    host, port = env.split_host_port(listen, default_port=0)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"--ray-listen takes an IPv4 address[:port], got {listen!r}") from None
    if ip.version != 4:
        raise ValueError(f"--ray-listen takes an IPv4 address[:port], got {listen!r}")
    if ip.is_unspecified or not (ip.is_private or ip.is_loopback):
        logger.warning(
            "the replica listener is on %s, not a private address: keep it behind a firewall that "
            "admits only the Ray nodes (docs/scale-out.md)",
            host,
        )
    return host, port
