"""The interactive explorer (`panel serve app.py`): state, plots and layout."""
