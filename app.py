"""`panel serve app.py`: the daviz explorer (one independent experiment per browser session)."""
from daviz.app.explorer import create_app

create_app().servable(title="daviz explorer")
