"""gunicorn settings for the bench: like production, without an access log per request."""

accesslog = None  # no access log at all: gunicorn would still format each line
errorlog = "-"
loglevel = "warning"
control_socket_disable = True
