"""daviz: explore ensemble data assimilation, classic filters and the learned MNMEF, side by side."""
__version__ = "0.1.0"
