"""``python -m vgi_flight``."""

from __future__ import annotations

import sys

from vgi_flight.cli import main

sys.exit(main())
