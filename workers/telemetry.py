"""Telemetry of a worker or client process: Temporal's runtime with a Prometheus endpoint
(SDK metrics and Countersign's own, see activities/metrics.py), and optional OpenTelemetry
tracing of workflows and activities."""

from __future__ import annotations

from typing import Any

from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from countersign.settings import Settings, SettingsError

# One runtime per metrics address and process: the runtime owns the HTTP listener.
_runtimes: dict[str, Runtime] = {}

# Seconds, for the time from an approval request to its decision (minutes to days).
DECISION_BUCKETS = [1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 3 * 24 * 3600]


def temporal_runtime(settings: Settings) -> Runtime | None:
    """The runtime that serves /metrics on COUNTERSIGN_METRICS_ADDRESS (None: the default)."""
    address = settings.metrics_address
    if not address:
        return None
    if address not in _runtimes:
        try:
            _runtimes[address] = _prometheus_runtime(address)
        except ValueError as e:  # the exporter could not bind, e.g. "Address already in use"
            raise SettingsError(f"COUNTERSIGN_METRICS_ADDRESS={address}: {e}") from None
    return _runtimes[address]


def _prometheus_runtime(address: str) -> Runtime:
    return Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(
                bind_address=address,
                counters_total_suffix=True,
                durations_as_seconds=True,
                histogram_bucket_overrides={
                    "countersign_time_to_decision": DECISION_BUCKETS,
                },
            ),
            global_tags={"service": "countersign"},
        )
    )


def client_interceptors(settings: Settings) -> list[Any]:
    """OpenTelemetry spans for starting, signalling and running workflows and activities
    (COUNTERSIGN_TRACING). Spans go to the global tracer provider: configure an exporter
    there (e.g. OTLP) to ship them; without one they cost next to nothing."""
    if not settings.tracing:
        return []
    try:
        from temporalio.contrib.opentelemetry import TracingInterceptor
    except ImportError as e:
        raise RuntimeError(
            "COUNTERSIGN_TRACING=true needs OpenTelemetry: pip install 'countersign[tracing]'"
        ) from e
    return [TracingInterceptor()]
