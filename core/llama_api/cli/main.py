"""The `llama-api` command: serve, models, pull, install."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from llama_api import __version__

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        entry = {"time": self.formatTime(record), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        request = getattr(record, "request", None)  # the per-request line's fields
        if request is not None:
            entry["request"] = request
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llama-api",
        description="An OpenAI-compatible server for models on your own machine. "
                    "Each loaded model runs in its own worker process, loaded on demand.",
    )
    parser.add_argument("--version", action="version", version=f"llama-api {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="run the HTTP server",
                                description="Serve every model found in the models folder "
                                            "and the config file, loading each on first use.")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    add_model_options(serve)
    serve.add_argument("--max-workers", type=positive, default=1, metavar="N",
                       help="most models loaded at once, one process each (default: %(default)s)")
    serve.add_argument("--max-queue", type=non_negative, default=64, metavar="N",
                       help="most requests waiting for a busy model; more get 429 (default: %(default)s)")
    serve.add_argument("--idle-timeout", type=float, default=0, metavar="SECONDS",
                       help="unload a model idle this long; 0 = never (default: %(default)s)")
    serve.add_argument("--threads", type=positive, default=None, metavar="N",
                       help="threads per worker (default: the cores shared among --max-workers)")
    serve.add_argument("--spare-worker", action="store_true",
                       help="keep one worker process per plugin in use started ahead, its "
                            "libraries imported, so that a model not loaded yet starts in its "
                            "load time alone (costs an idle process each)")
    serve.add_argument("--ray", metavar="ADDRESS", default=None,
                       help="run model workers on the nodes of a Ray cluster: its head's "
                            "HOST:PORT, 'auto' (RAY_ADDRESS, or a cluster started on this "
                            "machine) or 'local' (start a one-node cluster); needs "
                            "pip install 'llama-api[ray]'. --max-workers and --max-memory "
                            "then apply per node")
    serve.add_argument("--max-memory", type=memory_size, default=None, metavar="SIZE",
                       help="host RAM all workers may hold, e.g. 8G; idle models are unloaded "
                            "to make room (default: 90%% of RAM; 0: no limit)")
    serve.add_argument("--max-gpu-memory", type=memory_size, default=None, metavar="SIZE",
                       help="VRAM all workers may hold, all GPUs together, e.g. 20G "
                            "(default: 90%% of VRAM)")
    serve.add_argument("--api-key", action="append", default=[], metavar="KEY",
                       help="require `Authorization: Bearer KEY`; repeat for several keys "
                            "(visible to other users in `ps`: prefer --api-key-file)")
    serve.add_argument("--api-key-file", type=Path, default=None, metavar="FILE",
                       help="read API keys from FILE, one per line (blank lines and lines "
                            "starting with # are skipped); LLAMA_API_KEYS=key1,key2 adds more")
    serve.add_argument("--admin-key", action="append", default=[], metavar="KEY",
                       help="key for /admin and, by default, /metrics; repeat for several "
                            "(without one, /admin takes the API keys; visible in `ps`: "
                            "prefer --admin-key-file)")
    serve.add_argument("--admin-key-file", type=Path, default=None, metavar="FILE",
                       help="read admin keys from FILE, one per line, as --api-key-file; "
                            "LLAMA_API_ADMIN_KEY=key1,key2 adds more")
    serve.add_argument("--metrics-auth", choices=["admin", "api", "none"], default="admin",
                       help="who may read /metrics: the admin key (the API key when no admin "
                            "key is set), the API key, or anyone (default: %(default)s)")
    serve.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                       help="where state is kept (stored Responses API responses); default "
                            "$XDG_DATA_HOME/llama-api or ~/.local/share/llama-api")
    serve.add_argument("--responses-ttl", type=seconds, default=30 * 24 * 3600, metavar="SECONDS",
                       help="delete stored responses older than this; 0 keeps them "
                            "(default: 30 days)")
    serve.add_argument("--grace-period", type=seconds, default=10.0, metavar="SECONDS",
                       help="on SIGTERM or Ctrl-C, let running requests finish for this long "
                            "before they are cut off and the workers end (default: %(default)s)")
    serve.add_argument("--allow-image-urls", action="store_true",
                       help="fetch http(s) image URLs in requests to vision models (bounded "
                            "in size and time; off: images come as data: URLs or base64)")
    serve.add_argument("--keepalive", type=seconds, default=5.0, metavar="SECONDS",
                       help="a stream with nothing to send this long (waiting for a load, a "
                            "slot, a long prompt) sends an SSE comment; 0 = never "
                            "(default: %(default)s)")
    serve.add_argument("--request-timeout", type=seconds, default=300.0, metavar="SECONDS",
                       help="kill a worker that sends nothing for a running request this long "
                            "(queueing doesn't count; each token restarts it); raise it for "
                            "very long prompts on slow hardware; 0 = never (default: %(default)s)")
    serve.add_argument("--load-timeout", type=seconds, default=600.0, metavar="SECONDS",
                       help="kill a worker whose model takes longer than this to load; "
                            "0 = never (default: %(default)s)")
    serve.add_argument("--body-timeout", type=seconds, default=30.0, metavar="SECONDS",
                       help="answer 408 and close the connection when a request body's next "
                            "piece takes longer than this to arrive; 0 = never "
                            "(default: %(default)s)")
    serve.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                       help="let web pages from ORIGIN (e.g. http://localhost:3000, or *) "
                            "call the API; repeat for several (default: CORS off)")
    serve.add_argument("--no-ui", action="store_true",
                       help="serve no web page at / (API clients get its JSON index either way)")
    serve.add_argument("--log-level", default="info",
                       choices=["debug", "info", "warning", "error"], help="(default: %(default)s)")
    serve.add_argument("--log-format", default="text", choices=["text", "json"],
                       help="text lines, or one JSON object per line (default: %(default)s)")

    models = commands.add_parser("models", help="list the models that would be served",
                                 description="List models, their backends, and installed plugins.")
    add_model_options(models)

    add_pull_command(commands)
    add_admin_commands(commands)

    install = commands.add_parser("install", help="install a backend plugin and its dependencies",
                                  description="pip-install a backend plugin by short name, torch "
                                              "first and pinned, with the right build flags.")
    from llama_api.cli.install import BACKENDS

    install.add_argument("plugin", choices=sorted(BACKENDS), help="backend to install")
    install.add_argument("--force-cuda", action="store_true",
                         help="install CUDA builds (torch from PyPI's default CUDA wheels, "
                              "llama.cpp compiled with -DGGML_CUDA=on)")
    install.add_argument("--skip-torch-install", action="store_true",
                         help="keep the torch you have installed")
    install.add_argument("--torch-index-url", metavar="URL",
                         help="pip index to take torch from (e.g. PyTorch's CPU or CUDA index)")
    install.add_argument("--upgrade", action="store_true", help="upgrade the plugin if present")
    install.add_argument("--dry-run", action="store_true", help="print the pip commands only")
    return parser


def add_admin_commands(commands) -> None:
    """ps, load and unload: the admin API of a running server, from the shell."""
    for name, text in (("ps", "show what a running server has loaded"),
                       ("load", "load a model on a running server"),
                       ("unload", "unload a model on a running server")):
        command = commands.add_parser(name, help=text, description=text + ".")
        command.add_argument("--url", default=os.environ.get("LLAMA_API_URL", "http://127.0.0.1:8000"),
                             help="the server (default: $LLAMA_API_URL or %(default)s); the key "
                                  "comes from LLAMA_API_ADMIN_KEY, else the first of LLAMA_API_KEYS")
        if name != "ps":
            command.add_argument("model", metavar="ID", help="model id or alias")
        if name == "load":
            command.add_argument("--pin", action="store_true",
                                 help="pin it: never evicted nor unloaded when idle")
        if name == "unload":
            command.add_argument("--force", action="store_true",
                                 help="unload even while it serves (its requests end)")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", type=Path, default=Path("models"), metavar="DIR",
                        help="folder scanned for models (default: %(default)s)")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="models.toml defining models explicitly")


def add_pull_command(commands) -> None:
    pull = commands.add_parser(
        "pull", help="download a model from the Hugging Face Hub into the models folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Download a model from the Hugging Face Hub into the models folder, where\n"
                    "`serve` finds it (a running server lists it without a restart).",
        epilog="""what is downloaded:
  REPO FILE          that one file (e.g. a .gguf), into DIR/
  REPO --quant Q     the repo's .gguf file whose name has the quantization Q (all parts
                     of a split GGUF); several matches are refused with the list
  REPO               the repo's only .gguf file; a repo with no .gguf (transformers,
                     sentence-transformers, GPTQ, EXL2, EXL3) is downloaded whole
                     into DIR/<repo name>/, without other runtimes' copies of the
                     weights (ONNX, OpenVINO, TF/Flax, .bin beside .safetensors)

Every file is checked against the Hub's checksum (LFS sha256, or the git blob id) and only
then moved into place. An interrupted download resumes where it stopped when the same
command runs again (partial files wait in DIR/.pull/). Gated or private repositories need
a token with access: set HF_TOKEN. HF_ENDPOINT points at another Hub (a mirror).

examples:
  llama-api pull bartowski/Qwen2.5-0.5B-Instruct-GGUF --quant Q4_K_M
  llama-api pull TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF tinyllama-1.1b-chat-v1.0.Q4_0.gguf
  llama-api pull BAAI/bge-small-en-v1.5""")
    pull.add_argument("repo", metavar="REPO", help="repository id on the Hub, e.g. owner/name")
    pull.add_argument("file", metavar="FILE", nargs="?", default=None,
                      help="one file of the repository (path inside it)")
    pull.add_argument("--quant", metavar="Q", default=None,
                      help="pick the .gguf file by quantization, e.g. Q4_K_M or Q8_0")
    pull.add_argument("--revision", metavar="R", default=None,
                      help="branch, tag or commit to download (default: main)")
    pull.add_argument("--models-dir", type=Path, default=Path("models"), metavar="DIR",
                      help="folder to download into (default: %(default)s)")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError("must be 0 or more seconds")
    return value


def memory_size(text: str) -> int:
    from llama_api.scheduling.memory import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def serve(args) -> int:
    import uvicorn

    from llama_api.api.app import ServerConfig, create_app
    from llama_api.api.images import ImageSettings
    from llama_api.api.responses_store import default_data_dir
    from llama_api.scheduling.entries import Settings
    from llama_api.scheduling.registry import ConfigError

    try:
        api_keys = collect_api_keys(args.api_key, args.api_key_file, os.environ.get("LLAMA_API_KEYS"))
    except OSError as exc:
        print(f"error: --api-key-file: {exc}", file=sys.stderr)
        return 2
    try:
        admin_keys = collect_api_keys(args.admin_key, args.admin_key_file,
                                      os.environ.get("LLAMA_API_ADMIN_KEY"))
    except OSError as exc:
        print(f"error: --admin-key-file: {exc}", file=sys.stderr)
        return 2
    config = ServerConfig(
        models_dir=args.models_dir,
        config=args.config,
        api_keys=api_keys,
        admin_keys=admin_keys,
        metrics_auth=args.metrics_auth,
        scheduling=Settings(
            max_workers=args.max_workers,
            max_queue=args.max_queue,
            idle_timeout=args.idle_timeout,
            threads_per_worker=args.threads,
            max_memory=args.max_memory,
            max_gpu_memory=args.max_gpu_memory,
            request_timeout=args.request_timeout,
            load_timeout=args.load_timeout,
            spare_workers=args.spare_worker,
        ),
        data_dir=args.data_dir or default_data_dir(),
        responses_ttl=args.responses_ttl,
        keepalive=args.keepalive,
        images=ImageSettings(allow_urls=args.allow_image_urls),
        cors_origins=args.cors_origin,
        body_timeout=args.body_timeout,
        ui=not args.no_ui,
    )
    from llama_api.scheduling.registry import read_config
    from llama_api.workers.plugins import Plugins

    plugins = Plugins()  # once: the app serves with these
    if args.config is not None:  # fail fast, before binding the port
        try:
            read_config(args.config, plugins.backends(), remote=args.ray is not None)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if api_keys:  # how many, never which
        logging.getLogger("llama_api.cli.main").info("API keys required: %d key(s)", len(api_keys))
    if config.admin_keys:
        logging.getLogger("llama_api.cli.main").info("admin keys required: %d key(s)",
                                                len(config.admin_keys))
    placement = None
    if args.ray is not None:  # fail fast too: Ray itself retries a wrong address for minutes
        placement = join_cluster(args.ray, args.max_memory)
        if placement is None:
            return 2
    app = create_app(config, plugins, placement)
    try:
        run_until_signalled(uvicorn.Config(
        app, host=args.host, port=args.port, log_level=args.log_level, log_config=None,
        access_log=args.log_level == "debug", timeout_graceful_shutdown=args.grace_period,
        ))
    finally:
        if placement is not None:
            placement.close()
    return 0


def join_cluster(address: str, max_memory: int | None):
    """The Ray placement for `serve --ray ADDRESS`, connected; None (and the reason printed)
    when Ray isn't installed or the cluster can't be joined."""
    try:
        from llama_api.cluster.placement import ClusterError, RayPlacement
    except ImportError as exc:
        print(f"error: --ray needs Ray ({exc}); pip install 'llama-api[ray]'", file=sys.stderr)
        return None
    placement = RayPlacement(max_memory)
    try:
        placement.connect(address)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    return placement


def collect_api_keys(flags: list[str], key_file: Path | None, from_env: str | None) -> list[str]:
    """--api-key values, then the file's lines, then LLAMA_API_KEYS; each key once."""
    keys = [key.strip() for key in flags]
    if key_file is not None:
        for line in key_file.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                keys.append(line.strip())
    keys.extend(key.strip() for key in (from_env or "").split(","))
    return list(dict.fromkeys(key for key in keys if key))


def run_until_signalled(config) -> None:
    """Run uvicorn until SIGTERM or SIGINT, shut down gracefully, and return normally.

    uvicorn itself re-raises the caught signal after its graceful shutdown, so the process
    dies by it (status -15) and service managers read a clean stop as a failure. This
    server only restores the previous handlers. A second Ctrl-C still forces the exit.
    """
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            originals = {sig: signal.signal(sig, self.handle_exit)
                         for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in originals.items():
                    signal.signal(sig, handler)

    Server(config).run()


def list_models(args) -> int:
    from llama_api.scheduling.registry import ConfigError, Registry
    from llama_api.workers.plugins import Plugins

    plugins = Plugins()
    try:
        registry = Registry.build(plugins, args.models_dir, args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    models = registry.known  # just scanned
    print("Models:")
    if not models:
        print(f"  none found in {args.models_dir}/")
    width = max([len(model_id) for model_id in models] + [8])
    for spec in models.values():
        aliases = f"  (aliases: {', '.join(spec.aliases)})" if spec.aliases else ""
        print(f"  {spec.id:<{width}}  {spec.backend:<12}  {spec.path}{aliases}")
    print("Plugins:")
    for name in plugins.names():
        print(f"  {name:<{width}}  {plugins.distributions.get(name, '')}")
    for name, error in plugins.broken.items():
        print(f"  {name:<{width}}  BROKEN: {error}")
    return 0


def pull(args) -> int:
    from llama_api.cli.pull import PullError, pull_model

    for name in ("httpx", "httpx2"):  # one line per HTTP request is noise here
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        target = pull_model(args.repo, args.file, quant=args.quant, models_dir=args.models_dir,
                            revision=args.revision)
    except PullError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume the download", file=sys.stderr)
        return 130
    print(f"saved {target}")
    return 0


def admin(args) -> int:
    from llama_api.cli import admin_client

    key = admin_client.key_from_environment()
    if args.command == "ps":
        return admin_client.ps_command(args.url, key)
    if args.command == "load":
        return admin_client.load_command(args.url, args.model, key, pin=args.pin)
    return admin_client.unload_command(args.url, args.model, key, force=args.force)


def install(args) -> int:
    from llama_api.cli import install as installer

    steps = installer.plan(args.plugin, force_cuda=args.force_cuda,
                           skip_torch_install=args.skip_torch_install,
                           torch_index_url=args.torch_index_url, upgrade=args.upgrade)
    return installer.run(steps, dry_run=args.dry_run)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    json_logs = getattr(args, "log_format", "text") == "json"
    handler.setFormatter(JsonFormatter() if json_logs else logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=getattr(args, "log_level", "info").upper(), handlers=[handler])
    command = {"serve": serve, "models": list_models, "pull": pull, "install": install,
               "ps": admin, "load": admin, "unload": admin}[args.command]
    return command(args)


if __name__ == "__main__":
    sys.exit(main())
