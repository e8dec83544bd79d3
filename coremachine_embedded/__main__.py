"""``python -m coremachine_embedded`` and the ``coremachine`` console script."""
from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
