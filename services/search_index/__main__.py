from services._shared import main
from services.search_index import EXAMPLE

raise SystemExit(main(EXAMPLE.name, EXAMPLE.create_app, EXAMPLE.seed))
