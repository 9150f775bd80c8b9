"""The connector's worker processes: edge connections and streams to origins."""
