from services._shared import main
from services.search_index import SERVICE, create_app, seed

raise SystemExit(main(SERVICE, create_app, seed))
