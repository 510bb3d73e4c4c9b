import sys

from llama_api.cli import main

sys.exit(main())
