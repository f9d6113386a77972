"""`python -m progdistill.cli ...` (as torchrun and accelerate launch start it): the `progdistill` command."""

import sys

from . import main

sys.exit(main())
