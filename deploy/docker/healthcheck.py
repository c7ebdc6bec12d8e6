"""Container health probe: GET a URL and exit 0 on a 2xx answer, 1 otherwise (no curl in the image).

Usage: python healthcheck.py [URL]   (default: $AMS_HEALTHCHECK_URL)
Workers answer /healthz (alive) and /readyz (Redis and store reachable); the webserver /server_info.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    """Probe the URL given as the first argument or in AMS_HEALTHCHECK_URL."""
    url = argv[1] if len(argv) > 1 else os.environ.get("AMS_HEALTHCHECK_URL", "")
    if not url.startswith(("http://", "https://")):
        print(f"healthcheck: no http(s) URL to probe (got {url!r})", file=sys.stderr)
        return 2
    timeout = float(os.environ.get("AMS_HEALTHCHECK_TIMEOUT_S", "4"))
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        print(f"healthcheck: {url} answered {exc.code}: {exc.read(300).decode(errors='replace')}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"healthcheck: {url} unreachable: {exc}", file=sys.stderr)
        return 1
    return 0 if 200 <= status < 300 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
