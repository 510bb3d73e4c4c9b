"""The benchmark suite: llama-api against llama.cpp's `llama-server`, llama-cpp-python's
server and in-process llama-cpp-python, in one run (`make bench`; `python -m bench --help`)."""
