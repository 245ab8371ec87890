"""Alerts against a real local HTTP server: formats, retries with backoff, giving up, no secret in the payload."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import structlog
from pydantic import SecretStr

from omni_tasks.ops import alerts
from omni_tasks.settings import AlertSettings, load_settings


@dataclass
class Recorder:
    """What the server received, and how it answers: a list of statuses, then 200; ``delay_s`` before answering."""

    statuses: list[int] = field(default_factory=list)
    delay_s: float = 0.0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server's naming
            length = int(self.headers.get("Content-Length", "0"))
            recorder.bodies.append(json.loads(self.rfile.read(length)))
            recorder.paths.append(self.path)
            recorder.times.append(time.monotonic())
            time.sleep(recorder.delay_s)  # the action: a webhook as slow as the test asks
            status = recorder.statuses.pop(0) if recorder.statuses else 200
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}')
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and left

        def log_message(self, *_: Any) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", recorder
    httpd.shutdown()
    httpd.server_close()


def settings_for(url: str | None, **extra: Any) -> AlertSettings:
    values: dict[str, Any] = {"webhook_url": SecretStr(url) if url else None, "backoff_s": 0.01, "timeout_s": 1.0, **extra}
    return AlertSettings(**values)


EVENT = {"kind": "kill_switch.engaged", "severity": "critical", "message": "daily loss past the limit", "actor": "watchdog:risk_breach"}


def test_no_webhook_configured_sends_nothing(server: tuple[str, Recorder]) -> None:
    _, recorder = server
    assert alerts.deliver(settings_for(None), EVENT) is False
    alerts.send_alert(settings_for(None), EVENT)
    alerts.send_alert(settings_for(None), EVENT, wait=False)
    assert alerts.drain(2.0)
    assert load_settings({}).alerts.webhook_url is None  # off by default
    assert recorder.bodies == []


def test_slack_payload_is_one_text_field(server: tuple[str, Recorder]) -> None:
    url, recorder = server
    assert alerts.deliver(settings_for(url + "/services/T000/B000/slack-hook"), EVENT) is True
    assert len(recorder.bodies) == 1
    body = recorder.bodies[0]
    assert set(body) == {"text"}
    assert body["text"].startswith("[omni-tasks] CRITICAL kill_switch.engaged: daily loss past the limit")
    assert "actor: watchdog:risk_breach" in body["text"]
    assert recorder.paths == ["/services/T000/B000/slack-hook"]


def test_telegram_payload_carries_the_chat_id(server: tuple[str, Recorder]) -> None:
    url, recorder = server
    assert alerts.deliver(settings_for(url + "/sendMessage", format="telegram", telegram_chat_id="-1001234"), EVENT)
    assert recorder.bodies[0]["chat_id"] == "-1001234"
    assert set(recorder.bodies[0]) == {"chat_id", "text"}
    assert "kill_switch.engaged" in recorder.bodies[0]["text"]


def test_a_server_that_fails_twice_then_succeeds_gets_three_attempts_with_growing_backoff(server: tuple[str, Recorder]) -> None:
    url, recorder = server
    recorder.statuses = [500, 503]
    sleeps: list[float] = []
    assert (
        alerts.deliver(settings_for(url, backoff_s=0.05, retries=3), EVENT, sleep=lambda s: (sleeps.append(s), time.sleep(s))[1] is None)
        is True
    )
    print(f"\nattempts until delivered: {len(recorder.bodies)} of at most 4; backoffs {sleeps}")
    assert len(recorder.bodies) == 3
    assert sleeps == [0.05, 0.1]
    assert recorder.times[1] - recorder.times[0] >= 0.05
    assert recorder.bodies[0] == recorder.bodies[2]


def test_a_server_that_always_fails_is_given_up_after_the_configured_retries(server: tuple[str, Recorder]) -> None:
    url, recorder = server
    recorder.statuses = [500] * 10
    started = time.monotonic()
    assert alerts.deliver(settings_for(url, retries=2), EVENT) is False
    assert len(recorder.bodies) == 3  # 1 + 2 retries
    assert time.monotonic() - started < 2.0


def test_a_429_is_retried_and_a_400_is_not(server: tuple[str, Recorder]) -> None:
    url, recorder = server
    recorder.statuses = [429]
    assert alerts.deliver(settings_for(url), EVENT) is True
    assert len(recorder.bodies) == 2
    recorder.statuses = [400]
    assert alerts.deliver(settings_for(url), EVENT) is False
    assert len(recorder.bodies) == 3  # one more attempt, no retry


def test_a_timeout_is_retried(server: tuple[str, Recorder]) -> None:
    url, recorder = server
    recorder.delay_s = 0.6
    assert alerts.deliver(settings_for(url, timeout_s=0.2, retries=1), EVENT) is False
    assert len(recorder.bodies) == 2


def test_nothing_listening_never_raises(server: tuple[str, Recorder]) -> None:
    unused = settings_for("http://127.0.0.1:9/hook", retries=1)
    assert alerts.deliver(unused, EVENT) is False
    alerts.send_alert(unused, EVENT)  # does not raise


def test_non_blocking_send_returns_before_a_slow_webhook_answers(server: tuple[str, Recorder]) -> None:
    url, recorder = server
    recorder.delay_s = 0.5
    started = time.monotonic()
    for _ in range(3):
        alerts.send_alert(settings_for(url), EVENT, wait=False)
    queued_ms = (time.monotonic() - started) * 1000
    print(f"\n3 alerts queued in {queued_ms:.2f} ms against a webhook answering in 500 ms")
    assert queued_ms < 50
    assert alerts.drain(10.0)
    assert len(recorder.bodies) == 3


def test_no_secret_ever_reaches_the_payload_or_the_log(server: tuple[str, Recorder]) -> None:
    url, recorder = server
    api_key, secret_key, password = "PKTESTKEY" + "x7" * 8, "sk-" + "q9" * 16, "hunter2-" + "z" * 8
    hook = f"{url}/bot{'9' * 10}:AAH{'k' * 20}/sendMessage"
    settings = load_settings(
        {
            "OMNI_ALPACA_API_KEY": api_key,
            "OMNI_ALPACA_SECRET_KEY": secret_key,
            "OMNI_DATABASE_URL": f"postgresql://omni:{password}@db.internal/omni",
            "OMNI_ALERTS_WEBHOOK_URL": hook,
            "OMNI_ALERTS_FORMAT": "telegram",
            "OMNI_ALERTS_TELEGRAM_CHAT_ID": "42",
            "OMNI_ALERTS_BACKOFF_S": "0.01",
        }
    )
    event = {
        "kind": "breaker.transition",
        "severity": "warning",
        "message": f"provider failed with key {api_key} at postgresql://omni:{password}@db.internal/omni",
        "settings": settings,
        "alpaca": settings.alpaca,
        "api_key": api_key,
        "secret": SecretStr(secret_key),
        "headers": {"APCA-API-SECRET-KEY": secret_key},
        "webhook": hook,
        "note": f"{secret_key} leaked in a free-text field",
        "amount": Decimal("12.5"),
    }
    with structlog.testing.capture_logs() as logs:
        recorder.statuses = [500]  # one failure logged on the way
        alerts.emit(event, settings=settings, wait=True)
        alerts.emit(
            {"kind": "x", "message": "no listener"},
            settings=settings.model_copy(
                update={
                    "alerts": settings.alerts.model_copy(update={"webhook_url": SecretStr("http://127.0.0.1:9/" + "t" * 30), "retries": 0})
                }
            ),
            wait=True,
        )
    assert len(recorder.bodies) == 2
    text = json.dumps(recorder.bodies[-1])
    for secret in (api_key, secret_key, password, hook, "AAH" + "k" * 20, "t" * 30):
        assert secret not in text
        assert secret not in repr(logs)
    assert "amount: 12.5" in recorder.bodies[-1]["text"]
    assert "****" in recorder.bodies[-1]["text"]  # masked, not silently dropped, in the message
    assert "settings" not in recorder.bodies[-1]["text"].split("\n", 1)[1]
