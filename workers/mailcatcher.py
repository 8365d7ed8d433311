"""The dev stack's mail catcher: a local SMTP server that keeps every message as files.

`countersign dev` points email notifications here, so a person can open an approval email and
click its link without any mail account. Each message lands in STATE/mail/ as the raw `.eml`
and, when it has one, its HTML part as `.html` (open it in a browser).

    python -m countersign.workers.mailcatcher --port 8125 --dir .countersign/mail
"""

from __future__ import annotations

import argparse
import contextlib
import email
import email.policy
import re
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class MailDrop:
    """aiosmtpd handler: write each message to a folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._n = 0
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw: bytes = envelope.original_content or envelope.content
        message = email.message_from_bytes(raw, policy=email.policy.default)
        with self._lock:
            self._n += 1
            n = self._n
        to = re.sub(r"[^A-Za-z0-9@._-]", "_", ",".join(envelope.rcpt_tos))[:60]
        stem = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{n:04d}-{to}"
        (self.folder / f"{stem}.eml").write_bytes(raw)
        body = message.get_body(preferencelist=("html",))  # type: ignore[attr-defined]
        if body is not None:
            (self.folder / f"{stem}.html").write_text(body.get_content())
        print(f"mail to {', '.join(envelope.rcpt_tos)}: {message['subject']} → {stem}.html")
        return "250 Message accepted for delivery"


def start(folder: Path, port: int, host: str = "127.0.0.1") -> Controller:
    controller = Controller(MailDrop(folder), hostname=host, port=port)
    controller.start()
    return controller


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, default=8125)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--dir", type=Path, required=True)
    args = p.parse_args()
    controller = start(args.dir, args.port, args.host)
    print(f"mail catcher on smtp://{args.host}:{args.port}, writing to {args.dir}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
