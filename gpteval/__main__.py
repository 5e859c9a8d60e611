"""`python -m gpteval ...` runs the CLI (useful where the console script is not installed)."""

import sys

from .cli import main

sys.exit(main())
