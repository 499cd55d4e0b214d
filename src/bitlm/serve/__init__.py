"""The inference and control server (``bitlm-serve``): ``app.py`` (routes), ``schemas.py``
(request models), ``state.py`` (settings, telemetry store), ``static/`` (the dashboard).

Only what the training side shares is here, free of the server's optional dependencies
(``pip install 'bitlm[serve]'``): the rules for published telemetry.
"""

MAX_TELEMETRY_METRICS = 256


def valid_metric_name(name: str) -> bool:
    """Letters, digits, ``/`` and ``_`` (``val/bpb``, ``telemetry/C_lz76_data``), 1–128."""
    return 0 < len(name) <= 128 and name.replace("/", "").replace("_", "").isalnum()
