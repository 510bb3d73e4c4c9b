import sys

from llama_api.cli.main import main

sys.exit(main())
