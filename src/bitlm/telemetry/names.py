"""The rules for published telemetry, shared by the side that publishes it (a training run's
``TelemetryPublisher``) and the side that accepts it (``bitlm-serve``'s ``POST /telemetry``), so
that a run never sends what the server refuses. Plain Python: the publisher needs none of the
server's optional dependencies."""

MAX_TELEMETRY_METRICS = 256


def valid_metric_name(name: str) -> bool:
    """Letters, digits, ``/`` and ``_`` (``val/bpb``, ``telemetry/C_lz76_data``), 1–128."""
    return 0 < len(name) <= 128 and name.replace("/", "").replace("_", "").isalnum()
