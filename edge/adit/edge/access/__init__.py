"""Cloudflare Access in the edge: applications, policies, identity providers, logins."""
