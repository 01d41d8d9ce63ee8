from services._shared import main
from services.notifications import SERVICE, create_app, seed

raise SystemExit(main(SERVICE, create_app, seed))
