"""``python -m plugins.auth token create|list|revoke``: the token commands with default options."""

import sys

from plugins.auth.cli import main

sys.exit(main())
