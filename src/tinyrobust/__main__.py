"""``python -m tinyrobust`` = the ``tinyrobust`` command (``reproduce --jobs`` starts its workers this way)."""

import sys

from .cli import main

sys.exit(main())
