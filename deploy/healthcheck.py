"""Container health check: exit 0 when this machine's sida server answers /readyz with 200, else 1.

The image's HEALTHCHECK and the compose file run it. It finds the port the way `sida serve` does
(SIDA_* variables, then the SIDA_CONFIG file), so set the port there rather than with `--port`.
"""

import os
import sys
import urllib.error
import urllib.request


def readyz_url():
    from serve.settings import load_settings
    settings = load_settings(os.environ.get('SIDA_CONFIG') or None)
    host = '127.0.0.1' if settings.host in ('0.0.0.0', '', '::') else settings.host
    host = f'[{host}]' if ':' in host else host
    return f'http://{host}:{settings.port}/readyz'


def main():
    url = readyz_url()
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as e:      # 503 while loading or when a backend is unhealthy
        print(f'{url}: {e.code} {e.read().decode(errors="replace")[:300]}')
    except OSError as e:                     # not listening yet, refused, timed out
        print(f'{url}: {e}')
    return 1


if __name__ == '__main__':
    sys.exit(main())
