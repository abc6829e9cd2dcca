"""`python -m vitmech ...`: the `vitmech` command."""

import sys

from vitmech.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
