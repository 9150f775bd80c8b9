"""Real services for the Access tests: an OpenID Provider, an SMTP catcher, a GeoIP database
and a browser."""
