"""Ollama's API (``/api/*``): ``protocol`` holds the bodies, ``serving`` translates to and
from the engine, ``routes`` registers the routes."""
