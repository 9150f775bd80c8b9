"""Cloudflare Access in the edge: applications, policies, identity providers, service tokens,
the origin JWT and its key set, the decisions at the public listener and their log."""
