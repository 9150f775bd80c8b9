"""The self-hosted edge: tunnel listener, public listener, routing, management API."""
