"""`python -m tokenpools.infra.kafka_local ...`: see tokenpools.infra.kafka_local.cli."""

import sys

from tokenpools.infra.kafka_local.cli import main

sys.exit(main())
