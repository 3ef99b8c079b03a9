"""The long-running service: lifecycle, watching, lanes, scheduling, the socket server."""
