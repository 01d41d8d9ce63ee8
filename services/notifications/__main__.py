from services._shared import main
from services.notifications import EXAMPLE

raise SystemExit(main(EXAMPLE.name, EXAMPLE.create_app, EXAMPLE.seed))
