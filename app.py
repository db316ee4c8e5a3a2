"""`panel serve app.py`: the daviz explorer (one independent experiment per browser session)."""
from daviz.app.serve import serve_page

serve_page(title="daviz explorer")
