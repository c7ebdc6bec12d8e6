"""`python -m services.health`."""

import sys

from services.health.app import main

sys.exit(main())
