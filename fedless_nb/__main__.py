"""`python -m fedless_nb` is the `fedless-nb` command."""

import sys

from .cli import main

sys.exit(main())
