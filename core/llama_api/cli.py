"""The `llama-api` command: serve, models, install."""

from __future__ import annotations

import argparse
import logging
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
    serve.add_argument("--api-key", action="append", default=[], metavar="KEY",
                       help="require `Authorization: Bearer KEY`; repeat for several keys")
    serve.add_argument("--log-level", default="info",
                       choices=["debug", "info", "warning", "error"], help="(default: %(default)s)")
    serve.add_argument("--log-format", default="text", choices=["text", "json"],
                       help="text lines, or one JSON object per line (default: %(default)s)")

    models = commands.add_parser("models", help="list the models that would be served",
                                 description="List models, their backends, and installed plugins.")
    add_model_options(models)

    install = commands.add_parser("install", help="install a backend plugin and its dependencies",
                                  description="pip-install a backend plugin by short name, torch "
                                              "first and pinned, with the right build flags.")
    from llama_api.install import BACKENDS

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


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", type=Path, default=Path("models"), metavar="DIR",
                        help="folder scanned for models (default: %(default)s)")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="models.toml defining models explicitly")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def serve(args) -> int:
    import uvicorn

    from llama_api.app import ServerConfig, create_app
    from llama_api.registry import ConfigError
    from llama_api.scheduler import Settings

    config = ServerConfig(
        models_dir=args.models_dir,
        config=args.config,
        api_keys=args.api_key,
        scheduling=Settings(
            max_workers=args.max_workers,
            max_queue=args.max_queue,
            idle_timeout=args.idle_timeout,
            threads_per_worker=args.threads,
        ),
    )
    if args.config is not None:  # fail fast, before binding the port
        try:
            from llama_api.plugins import Plugins
            from llama_api.registry import read_config

            read_config(args.config, Plugins().backends())
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    app = create_app(config)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                log_config=None, access_log=args.log_level == "debug")
    return 0


def list_models(args) -> int:
    from llama_api.plugins import Plugins
    from llama_api.registry import ConfigError, Registry

    plugins = Plugins()
    try:
        registry = Registry.build(plugins, args.models_dir, args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("Models:")
    if not registry.models:
        print(f"  none found in {args.models_dir}/")
    width = max([len(model_id) for model_id in registry.models] + [8])
    for spec in registry.models.values():
        aliases = f"  (aliases: {', '.join(spec.aliases)})" if spec.aliases else ""
        print(f"  {spec.id:<{width}}  {spec.backend:<12}  {spec.path}{aliases}")
    print("Plugins:")
    for name in plugins.names():
        print(f"  {name:<{width}}  {plugins.distributions.get(name, '')}")
    for name, error in plugins.broken.items():
        print(f"  {name:<{width}}  BROKEN: {error}")
    return 0


def install(args) -> int:
    from llama_api import install as installer

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
    command = {"serve": serve, "models": list_models, "install": install}[args.command]
    return command(args)


if __name__ == "__main__":
    sys.exit(main())
