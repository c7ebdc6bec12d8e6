"""`python -m services.alerts`: run the alerts worker."""

import sys

from services.alerts.app import main

sys.exit(main())
