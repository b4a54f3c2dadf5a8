"""The Celery app: broker ``BILLWATCH_BROKER_URL`` (Redis in production) and the beat schedule.

Run with ``billwatch worker`` and ``billwatch beat`` (or ``celery -A billwatch.jobs.celery_app
worker``). Every task acknowledges late and is re-queued if its worker dies mid-task
(``acks_late`` + ``reject_on_worker_lost``), which is safe because every task is idempotent:
jobs run once per period (:mod:`billwatch.jobs.runs`) and alert deliveries claim their row.
With Redis, a message whose worker vanished entirely comes back after
``BILLWATCH_BROKER_VISIBILITY_TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery, signals
from celery.schedules import crontab

from billwatch.config import Settings, get_settings

DAILY_METRICS_TASK = "billwatch.jobs.daily_metrics"
ANOMALY_CHECKS_TASK = "billwatch.jobs.anomaly_checks"
SWEEP_TASK = "billwatch.alerts.sweep"
DELIVER_TASK = "billwatch.alerts.deliver"
CHECK_TASK = "billwatch.jobs.check"
REDIS_SOCKET_TIMEOUT = 10.0
"""Seconds any Redis call (publish, result) may hang before it fails and is retried."""
AUDIT_FAILURE_TASK = "billwatch.alerts.audit_write_failed"
AUDIT_CHECKPOINT_TASK = "billwatch.audit.checkpoint"
AUDIT_PARTITIONS_TASK = "billwatch.audit.partitions"
WEBHOOKS_RECONCILE_TASK = "billwatch.webhooks.reconcile"
REFUNDS_SWEEP_TASK = "billwatch.billing.refunds_sweep"
OVERRIDES_EXPIRE_TASK = "billwatch.billing.expire_overrides"
SUBSCRIPTION_INTENTS_TASK = "billwatch.billing.sweep_subscription_intents"
IDEMPOTENCY_PRUNE_TASK = "billwatch.jobs.idempotency_prune"
AUDIT_SEAL_TASK = "billwatch.audit.seal"
WEBHOOKS_INBOX_TASK = "billwatch.webhooks.process_inbox"
WEBHOOKS_PRUNE_TASK = "billwatch.webhooks.prune_payloads"


def beat_schedule(settings: Settings | None = None) -> dict[str, dict[str, Any]]:
    """Daily metrics at 00:00 UTC and the audit partitions ahead at 00:05, anomaly checks at
    the top of every hour, the audit checkpoint at :15 and the Stripe reconcile at :30 of every
    hour, the audit seal every ``audit_seal_interval_seconds`` (the embedded runner's interval
    too); every minute the alert sweep (re-sends hand-offs that were lost, mails counts whose
    window ended), the refund and subscription-intent sweeps and the expiry of free grants and
    timed overrides; the webhook inbox every ``webhook_poll_seconds`` (due retries, lapsed
    leases, hand-offs that were lost); the pruning of expired idempotency keys at :45 and of
    Stripe payloads past their retention at 03:45 UTC."""
    settings = settings or get_settings()
    seal_every = float(settings.audit_seal_interval_seconds)
    poll = settings.webhook_poll_seconds
    return {
        "daily-metrics": {"task": DAILY_METRICS_TASK, "schedule": crontab(minute="0", hour="0")},
        "anomaly-checks": {"task": ANOMALY_CHECKS_TASK, "schedule": crontab(minute="0")},
        "audit-checkpoint": {"task": AUDIT_CHECKPOINT_TASK, "schedule": crontab(minute="15")},
        "audit-seal": {"task": AUDIT_SEAL_TASK, "schedule": seal_every},
        "audit-partitions": {"task": AUDIT_PARTITIONS_TASK,
                             "schedule": crontab(minute="5", hour="0")},
        "webhooks-reconcile": {"task": WEBHOOKS_RECONCILE_TASK, "schedule": crontab(minute="30")},
        "alerts-sweep": {"task": SWEEP_TASK, "schedule": 60.0},
        "refunds-sweep": {"task": REFUNDS_SWEEP_TASK, "schedule": 60.0},
        "overrides-expire": {"task": OVERRIDES_EXPIRE_TASK, "schedule": 60.0},
        "subscription-intents-sweep": {"task": SUBSCRIPTION_INTENTS_TASK, "schedule": 60.0},
        "idempotency-prune": {"task": IDEMPOTENCY_PRUNE_TASK, "schedule": crontab(minute="45")},
        "webhooks-inbox": {"task": WEBHOOKS_INBOX_TASK, "schedule": poll},
        "webhooks-prune": {"task": WEBHOOKS_PRUNE_TASK,
                           "schedule": crontab(minute="45", hour="3")},
    }


def make_celery(settings: Settings) -> Celery:
    """A Celery app for ``settings``: the worker's (from the environment) or a publisher's."""
    broker = settings.broker_url or "memory://"
    celery = Celery("billwatch", include=["billwatch.jobs.tasks"])
    celery.conf.update(
        broker_url=broker,
        result_backend=broker if broker.startswith(("redis://", "rediss://")) else None,
        result_expires=24 * 3600,
        task_default_queue=settings.celery_queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_track_started=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout_seconds,
                                  "socket_timeout": REDIS_SOCKET_TIMEOUT,
                                  "socket_connect_timeout": REDIS_SOCKET_TIMEOUT},
        redis_socket_timeout=REDIS_SOCKET_TIMEOUT,
        redis_socket_connect_timeout=REDIS_SOCKET_TIMEOUT,
        broker_connection_retry_on_startup=True,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2,
                                   "interval_max": 0.5},
        task_serializer="json", result_serializer="json", accept_content=["json"],
        timezone="UTC", enable_utc=True,
        worker_hijack_root_logger=False,
        beat_schedule=beat_schedule(settings),
    )
    return celery


app = make_celery(get_settings())


def _refuse_development_secrets(**_: Any) -> None:
    """A worker or beat started as ``celery -A`` refuses development secrets as the CLI does."""
    from billwatch.startup import InsecureSettings, require_secure_settings

    try:
        require_secure_settings(get_settings(), log_warning=False)
    except InsecureSettings as refused:
        sys.stderr.write(f"billwatch: {refused}\n")
        raise SystemExit(2) from None


signals.worker_init.connect(_refuse_development_secrets, weak=False)
signals.beat_init.connect(_refuse_development_secrets, weak=False)
