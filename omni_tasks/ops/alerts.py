"""Webhook alerts: kill switch and breaker transitions, validation failures (DESIGN section 8).

Off by default: with no ``OMNI_ALERTS_WEBHOOK_URL`` nothing is sent. The body
is Slack-compatible (``{"text": ...}``, an incoming webhook) or
Telegram-compatible (``{"chat_id": ..., "text": ...}``, the Bot API's
``sendMessage``). An event is a flat dict: ``kind`` (``kill_switch.engaged``,
``breaker.transition``, ``validation.failed``...), ``severity``
(``critical``/``warning``/``info``), ``message``, and any other scalar facts.

What never leaves: only scalar fields are rendered (objects such as a settings
group, dicts and lists are dropped), fields whose name suggests a credential
(``key``, ``secret``, ``token``, ``password``, ``url``...) are dropped, and
every configured secret's text and the password part of any URL are masked in
what remains. The webhook URL is itself a secret (a Slack hook or a Telegram
bot token is in it): it is never logged, and errors are reported without it.

Delivery retries a 5xx, a 429, a timeout or a refused connection with
exponential backoff (``backoff_s``, doubling) up to ``retries`` more times, then
gives up with a log line. Nothing here raises into the caller. ``wait=False``
hands the alert to one daemon thread through a bounded queue, so the kill
sequence is never slowed by a slow webhook; :func:`drain` waits for that queue
(the CLI calls it at exit through ``atexit``).
"""

from __future__ import annotations

import atexit
import json
import queue
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Final

import structlog

from omni_tasks.settings import AlertSettings, Settings, mask_url

_log = structlog.get_logger("omni.alerts")

#: Field names that are never rendered, whatever their value.
SECRET_FIELD: Final = re.compile(r"key|secret|token|passw|credential|auth|cookie|session|url|dsn|webhook", re.IGNORECASE)
MAX_FIELD_CHARS: Final = 500
MAX_TEXT_CHARS: Final = 3500  # Telegram's limit is 4096 characters; Slack's is larger
QUEUE_SIZE: Final = 100
_ENCRYPTED: Final = re.compile(r"enc:[A-Za-z0-9_\-=]+")


def _scalar(value: Any) -> str | None:
    """The text of a scalar value; None for anything else (objects, containers, secrets)."""
    if value is None or isinstance(value, bool | int | float | Decimal):
        return str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return _scalar(value.value)
    return None


def _scrub(text: str, redact: Iterable[str]) -> str:
    for secret in redact:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "****")
    text = _ENCRYPTED.sub("enc:****", text)
    return mask_url(text)


def format_text(event: Mapping[str, Any], *, redact: Iterable[str] = ()) -> str:
    """One readable message: a headline, then ``name: value`` for every safe scalar field."""
    secrets = [s for s in redact if s]
    severity = str(_scalar(event.get("severity")) or "info").upper()
    kind = _scalar(event.get("kind")) or "event"
    message = _scalar(event.get("message")) or ""
    lines = [f"[omni-tasks] {severity} {kind}: {message}".rstrip(": ")]
    for name, value in event.items():
        if name in {"severity", "kind", "message"} or SECRET_FIELD.search(str(name)):
            continue
        text = _scalar(value)
        if text is None:
            continue
        lines.append(f"{name}: {text[:MAX_FIELD_CHARS]}")
    return _scrub("\n".join(lines), secrets)[:MAX_TEXT_CHARS]


def build_payload(settings: AlertSettings, event: Mapping[str, Any], *, redact: Iterable[str] = ()) -> dict[str, Any]:
    """The JSON body for the configured format (no secret in it; see the module docstring)."""
    text = format_text(event, redact=redact)
    if settings.format == "telegram":
        return {"chat_id": settings.telegram_chat_id, "text": text}
    return {"text": text}


#: How one attempt went: delivered, worth retrying, or hopeless.
DELIVERED, RETRY, GIVE_UP = "delivered", "retry", "give_up"


def _attempt(url: str, body: bytes, timeout_s: float) -> tuple[str, str]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})  # noqa: S310 - http(s) checked by the settings
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - http(s) checked by the settings
            response.read()
            return DELIVERED, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        status = exc.code
        exc.close()
        if status >= 500 or status == 429:
            return RETRY, f"HTTP {status}"
        return GIVE_UP, f"HTTP {status}"
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
        # The exception text may carry the host; never the full URL, but mask it anyway.
        reason = getattr(exc, "reason", exc)
        return RETRY, f"{type(exc).__name__}: {str(reason).replace(url, '<webhook>')[:200]}"


def deliver(
    settings: AlertSettings,
    event: Mapping[str, Any],
    *,
    redact: Iterable[str] = (),
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Post one alert now, retrying as configured. True when the webhook accepted it. Never raises."""
    if settings.webhook_url is None:
        return False
    try:
        url = settings.webhook_url.get_secret_value()
        secrets = [*redact, url]
        body = json.dumps(build_payload(settings, event, redact=secrets), separators=(",", ":")).encode()
        attempts = 1 + settings.retries
        detail = ""
        for attempt in range(1, attempts + 1):
            outcome, detail = _attempt(url, body, settings.timeout_s)
            if outcome == DELIVERED:
                return True
            if outcome == GIVE_UP:
                _log.error("alert refused by the webhook; not retried", kind=event.get("kind"), status=detail, attempt=attempt)
                return False
            if attempt < attempts:
                sleep(settings.backoff_s * (2 ** (attempt - 1)))
        _log.error("alert not delivered", kind=event.get("kind"), attempts=attempts, last=detail)
    except Exception as exc:  # noqa: BLE001 - an alert must never break the caller (the kill sequence above all)
        _log.error("alert failed", kind=event.get("kind"), error=type(exc).__name__)
    return False


class _Dispatcher:
    """One daemon thread posting queued alerts in order; a full queue drops (and logs) the newest."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[AlertSettings, dict[str, Any], list[str]]] = queue.Queue(maxsize=QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.dropped = 0

    def submit(self, settings: AlertSettings, event: Mapping[str, Any], redact: Iterable[str]) -> None:
        self._ensure_thread()
        try:
            self._queue.put_nowait((settings, dict(event), list(redact)))
        except queue.Full:
            self.dropped += 1
            _log.error("alert queue full; alert dropped", kind=event.get("kind"), dropped=self.dropped)

    def drain(self, timeout_s: float) -> bool:
        """Wait until every queued alert was attempted (True) or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="omni-alerts", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            settings, event, redact = self._queue.get()
            try:
                deliver(settings, event, redact=redact)
            finally:
                self._queue.task_done()


_dispatcher = _Dispatcher()
_atexit_registered = False


def send_alert(settings: AlertSettings, event: Mapping[str, Any], *, redact: Iterable[str] = (), wait: bool = True) -> None:
    """Send ``event`` to the webhook (no URL configured: nothing happens). Never raises.

    ``wait=False`` queues it for the background thread and returns at once.
    ``redact``: further secret texts to mask (callers pass ``Settings.secret_values()``).
    """
    global _atexit_registered
    try:
        if settings.webhook_url is None:
            return
        if wait:
            deliver(settings, event, redact=redact)
            return
        if not _atexit_registered:
            atexit.register(drain, settings.timeout_s * (1 + settings.retries))
            _atexit_registered = True
        _dispatcher.submit(settings, event, redact)
    except Exception as exc:  # noqa: BLE001 - never into the caller
        _log.error("alert not sent", error=type(exc).__name__)


def drain(timeout_s: float = 10.0) -> bool:
    """Wait for queued alerts to be attempted; True when the queue emptied in time."""
    return _dispatcher.drain(timeout_s)


def emit(event: Mapping[str, Any], *, settings: Settings, wait: bool = False) -> None:
    """Send an alert with the caller's ``settings`` (background by default). Never raises.

    The hook used by breaker transitions, the kill switch and validation: they
    know nothing of webhooks, and with no URL configured this is a no-op.
    """
    try:
        if settings.alerts.webhook_url is None:
            return
        send_alert(settings.alerts, event, redact=settings.secret_values(), wait=wait)
    except Exception as exc:  # noqa: BLE001 - never into the caller
        _log.error("alert not sent", error=type(exc).__name__)
