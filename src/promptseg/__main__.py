"""`python -m promptseg` (and `torchrun -m promptseg train RUN.yaml`)."""
import sys

from .cli import main

sys.exit(main())
