"""The `llama-api` command line: serve, models, admin, pull, install."""
