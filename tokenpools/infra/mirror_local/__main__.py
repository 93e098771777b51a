"""`python -m tokenpools.infra.mirror_local ...`: see tokenpools.infra.mirror_local.cli."""

import sys

from tokenpools.infra.mirror_local.cli import main

sys.exit(main())
