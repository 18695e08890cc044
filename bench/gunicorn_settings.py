"""gunicorn settings for the bench: like production, without an access log per request."""

accesslog = "/dev/null"
errorlog = "-"
loglevel = "warning"
control_socket_disable = True
