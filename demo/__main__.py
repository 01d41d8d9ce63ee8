"""`python -m demo` runs the whole demo (demo/run.py); `python -m demo seed` only seeds.

The seeding path imports no test-only dependencies, so the Docker image can run it.
"""

import sys

if sys.argv[1:2] == ["seed"]:
    from demo.seed import main as seed_main

    raise SystemExit(seed_main(sys.argv[2:]))

from demo.run import main

raise SystemExit(main())
