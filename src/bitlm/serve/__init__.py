"""The inference and control server (``bitlm-serve``): ``app.py`` (the app, its routes and the
state behind them), ``middleware.py`` (what every request passes through: host check, body
limit, counting and security headers, the bearer token, the error answers), ``schemas.py``
(request models), ``settings.py`` (what the server is started with), ``state.py`` (the
telemetry store), ``static/`` (the dashboard).

The rules for published telemetry, which the training side shares, are
``bitlm.telemetry.names``: free of the server's optional dependencies
(``pip install 'bitlm[serve]'``).
"""
