"""`python -m demo` runs the whole demo (demo/run.py); `python -m demo seed` only seeds;
`python -m demo tokens FILE` only creates the demo's API tokens; `python -m demo requests`
files the demo's two erasure requests over the HTTP API.

Seeding, tokens and requests import no test-only dependencies, so the Docker image can
run them.
"""

import sys

if sys.argv[1:2] == ["seed"]:
    from demo.seed import main as seed_main

    raise SystemExit(seed_main(sys.argv[2:]))
if sys.argv[1:2] == ["tokens"]:
    from demo.tokens import main as tokens_main

    raise SystemExit(tokens_main(sys.argv[2:]))
if sys.argv[1:2] == ["requests"]:
    from demo.requests import main as requests_main

    raise SystemExit(requests_main(sys.argv[2:]))

from demo.run import main

raise SystemExit(main())
