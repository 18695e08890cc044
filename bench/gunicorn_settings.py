"""gunicorn settings for the bench: like production, without an access log per request."""

accesslog = None
errorlog = "-"
loglevel = "warning"
control_socket_disable = True
