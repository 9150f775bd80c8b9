"""Logging set-up shared by every adit process."""
