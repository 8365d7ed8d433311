"""structlog as the one log pipeline: JSON (or console) lines, ids bound, secrets redacted."""

from __future__ import annotations

import logging
import sys

import structlog

from countersign.guardrails.redaction import redact_processor


def configure_logging(level: str = "INFO", json: bool = True) -> None:
    """Route structlog and stdlib logging (temporalio's too) through redaction to stderr."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        # temporalio's loggers put workflow/activity ids in `extra`: keep them.
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # No frame locals in tracebacks: they are where secrets hide. The console renderer
        # wants the traceback as text (plain text has no locals), JSON as a list of frames.
        structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        if json
        else structlog.processors.ExceptionRenderer(),
        redact_processor,
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # One line per HTTP request is noise at INFO; failures surface through the caller.
    # (httpx2: the openai client's own copy of httpx.)
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)
