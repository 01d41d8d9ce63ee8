from services._shared import main
from services.preferences import SERVICE, create_app, seed

raise SystemExit(main(SERVICE, create_app, seed))
