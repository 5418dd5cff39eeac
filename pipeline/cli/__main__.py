"""``python -m pipeline.cli ...`` is ``sonostream ...``."""
import sys

from .console import main

sys.exit(main())
