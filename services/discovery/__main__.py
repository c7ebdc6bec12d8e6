"""`python -m services.discovery`: run the discovery worker."""

import sys

from services.discovery.app import main

sys.exit(main())
