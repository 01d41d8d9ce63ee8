from services._shared import main
from services.preferences import EXAMPLE

raise SystemExit(main(EXAMPLE.name, EXAMPLE.create_app, EXAMPLE.seed))
