"""Every Redis key and channel omni-tasks uses: one home, so two rooms can never disagree on a name.

A template names its fields in braces (``.format(name=...)``); a prefix is followed by a symbol.
tests/unit/test_keys.py checks that no other module spells a key.
"""

from __future__ import annotations

from typing import Final

# core
LATENCY_VIOLATIONS_KEY: Final = "omni:latency:violations:{budget}"
COUNTER_KEY: Final = "omni:counters:{name}"
BEAT_LEADER_KEY: Final = "omni:beat:leader"

# kombu's own (the Redis transport's hash of unacknowledged deliveries)
KOMBU_UNACKED_KEY: Final = "unacked"

# marketdata
RATELIMIT_WINDOW_KEY: Final = "omni:ratelimit:{provider}"
QUOTA_KEY: Final = "omni:quota:{provider}:{day}"
QUOTA_REFUSED_KEY: Final = "omni:quota:{provider}:{day}:refused"
QUOTA_SERVED_KEY: Final = "omni:quota:{provider}:served"  # zset: symbol -> when the provider last served a data call for it
SERIES_KEY: Final = "omni:series:{job}:{provider}:{symbol}:{timeframe}:{adjustment}"

# pipeline
DELIVERIES_KEY: Final = "omni:deliveries:{task_id}"
TASK_OUTCOMES_KEY: Final = "omni:task_outcomes"
OUTCOMES_DRAIN_LOCK_KEY: Final = "omni:lock:drain_outcomes"
WORKERS_KEY: Final = "omni:workers"
WORKER_INFO_KEY: Final = "omni:worker:{instance}"
WORKER_INFLIGHT_KEY: Final = "omni:inflight:{instance}"
BEAT_SLOT_KEY: Final = "omni:beat:slot:{task_id}"

# risk
RISK_REFRESH_PENDING_KEY: Final = "omni:risk:fill_refresh_pending"
RISK_LATEST_KEY: Final = "omni:risk:latest"

# safety
ALARM_CHANNEL: Final = "omni:safety:alarms"
ALARM_LOG_KEY: Final = "omni:safety:alarms:log"
ALARM_CLAIM_KEY: Final = "omni:safety:alarms:claimed:{kind}:{source}:{ts_ns}"
TRADING_STATE_KEY: Final = "omni:trading:state"
BREAKER_KEY: Final = "omni:breaker:{name}"
BREAKER_CALLS_KEY: Final = "omni:breaker:{name}:calls"
BREAKER_TRIALS_KEY: Final = "omni:breaker:{name}:trials"
BREAKER_REGISTRY_KEY: Final = "omni:breakers"
#: Transitions not yet in audit_log (JSON records, oldest first), and those being written (zset: record -> claimed at).
BREAKER_AUDIT_PENDING_KEY: Final = "omni:breaker:audit:pending"
BREAKER_AUDIT_INFLIGHT_KEY: Final = "omni:breaker:audit:inflight"

# stream
STREAM_LATENCY_KEY: Final = "omni:stream:latency"
#: A sharded stream worker's latencies (one per OMNI_STREAM_KEYS entry); the unsharded worker keeps STREAM_LATENCY_KEY.
STREAM_SHARD_LATENCY_KEY: Final = "omni:stream:latency:shard:{shard}"
BAR_KEY_PREFIX: Final = "omni:bar:"
STREAM_CONNLOCK_KEY: Final = "omni:stream:connlock:{fingerprint}"
QUOTE_KEY_PREFIX: Final = "omni:quote:"
QUOTE_STREAM_KEY: Final = "omni:quotes"
PROFILE_KEY_PREFIX: Final = "omni:profile:"
TRADING_STATUS_KEY_PREFIX: Final = "omni:tradingstatus:"
STREAM_CONTROL_KEY: Final = "omni:stream:control:{name}"

# system
PROBE_COMPLETIONS_KEY: Final = "omni:probe:completions"

# trading
TRADING_BOOK_KEY: Final = "omni:trading:book"

# watchdog
WATCHDOG_LAST_TICK_KEY: Final = "omni:watchdog:last_tick"
WATCHDOG_STREAK_KEY: Final = "omni:watchdog:streak"
WATCHDOG_FIRED_KEY: Final = "omni:watchdog:fired"
WATCHDOG_FIRST_EVALUATION_KEY: Final = "omni:watchdog:first_evaluation"
WATCHDOG_LATENCY_SEEN_KEY: Final = "omni:watchdog:latency_seen"
WATCHDOG_LAST_FINDINGS_KEY: Final = "omni:watchdog:last_findings"
WATCHDOG_EVALUATION_LOCK_KEY: Final = "omni:lock:watchdog_rules"
STREAM_STATUS_KEY: Final = "omni:stream:status"
#: A sharded stream worker's status hash (one per OMNI_STREAM_KEYS entry); the unsharded worker keeps STREAM_STATUS_KEY.
STREAM_SHARD_STATUS_KEY: Final = "omni:stream:status:shard:{shard}"
LEDGER_SUSPECTS_KEY: Final = "omni:ledgers:suspects"
LEDGER_REQUEUES_KEY: Final = "omni:ledgers:requeues"
LEDGER_EVENTS_KEY: Final = "omni:ledgers:events"
LEDGER_LAST_KEY: Final = "omni:ledgers:last"
LEDGER_SCANNED_KEY: Final = "omni:ledgers:scanned_at"
