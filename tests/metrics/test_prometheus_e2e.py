"""End to end: a real Prometheus scrapes a real billwatch that has handled real billing traffic.

Every expression of every dashboard panel (``deploy/grafana/dashboards``) and every rule
(``deploy/prometheus/rules``) is then evaluated through Prometheus's HTTP API: each must parse,
and the panels the dashboards mark ``"billwatch": {"core": true}`` must return data.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
import yaml
from sqlalchemy import select

from billwatch.accounts.models import Role
from billwatch.billing.models import StripeCustomer, Transaction, TransactionKind, TransactionStatus
from billwatch.payments.gateway import PaymentsGateway
from tests.metrics.helpers import label_offences, parse
from tests.metrics.processes import (
    METRICS_TOKEN,
    Prometheus,
    Served,
    billwatch_served,
    prometheus_running,
    wait_until,
)
from tests.support import REPO, TEST_WEBHOOK_SECRET, LocalStripe, keyed
from tests.support import test_settings as make_settings

DASHBOARDS = sorted((REPO / "deploy" / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = sorted((REPO / "deploy" / "prometheus" / "rules").glob("*.yml"))
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "15s", "$__range": "1h",
                     "${__rate_interval}": "5m", "${__interval}": "15s", "${__range}": "1h"}
"""Grafana fills these in before a query reaches Prometheus; so does the test."""


@dataclass(frozen=True)
class Expression:
    where: str
    expr: str
    core: bool = False
    panel: str = ""
    """Dashboard and panel title: a core panel needs data from at least one of its targets."""


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # rows carry their panels inside


def panel_expressions() -> list[Expression]:
    found = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in _panels(dashboard.get("panels", [])):
            core = bool((panel.get("billwatch") or {}).get("core"))
            for target in panel.get("targets", []):
                if target.get("expr"):
                    name = f"{path.name}: {panel.get('title')} #{panel.get('id')}"
                    found.append(Expression(f"{name} ({target.get('refId')})",
                                            grafana_expanded(target["expr"]), core, name))
    return found


def grafana_expanded(expr: str) -> str:
    for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a dashboard variable the test does not know: {expr}"
    return expr


def rule_expressions() -> list[Expression]:
    found = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                found.append(Expression(f"{path.name}: {group['name']}/{name}", rule["expr"]))
    return found


def scrape_config(rule_files: list[Path], target: str, token_file: Path) -> str:
    """The deployed job (its bearer authorization included), faster and at ``target``."""
    deployed = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    [job] = [job for job in deployed["scrape_configs"] if job["job_name"] == "billwatch"]
    token_file.write_text(METRICS_TOKEN + "\n")
    job.update({"scrape_interval": "1s", "scrape_timeout": "1s",
                "static_configs": [{"targets": [target]}],
                "authorization": {**job["authorization"], "credentials_file": str(token_file)}})
    return yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [job],
    })


# --- the running system ----------------------------------------------------------------------

@pytest.fixture
def stripe_peer(tmp_path: Path) -> Iterator[LocalStripe]:
    """A Stripe peer of this test's own, so its webhook target never reaches other tests."""
    (tmp_path / "stripe").mkdir()
    peer = LocalStripe(tmp_path / "stripe")
    yield peer
    peer.stop()


@pytest.fixture
async def system(tmp_path: Path, stripe_peer: LocalStripe) -> AsyncIterator[tuple[Served, Prometheus]]:
    settings = make_settings("sqlite+aiosqlite://", stripe_peer.url)
    await PaymentsGateway(settings).ensure_catalogue(settings.plans)
    async with billwatch_served(tmp_path / "billwatch", stripe_peer.url) as served:
        async with httpx.AsyncClient() as http:
            hooked = await http.post(
                f"{stripe_peer.url}/_config/webhooks/billwatch-e2e",
                data={"url": f"{served.url}/webhooks/stripe", "secret": TEST_WEBHOOK_SECRET},
                headers={"Authorization": "Bearer sk_test_billwatch_tests"})
            hooked.raise_for_status()
        config = scrape_config(RULE_FILES, f"127.0.0.1:{served.port}",
                               tmp_path / "metrics-token")
        async with prometheus_running(tmp_path / "prometheus", config) as prometheus:
            # Targets are discovered a few seconds after start; the traffic must come after the
            # first scrapes, or increase() sees a counter born at its final value.
            await wait_until(lambda: scraped_twice(prometheus), what="the first scrapes", within=60)
            yield served, prometheus


async def scraped_twice(prometheus: Prometheus) -> bool:
    result = await prometheus.vector('count_over_time(up{job="billwatch"}[1m]) >= 2')
    return bool(result)


@dataclass
class Traffic:
    served: Served
    http: httpx.AsyncClient
    peer: stripe.StripeClient

    async def checkout(self, headers: dict[str, str], owner: dict[str, str], plan: str,
                       proxy_id: uuid.UUID | None = None) -> None:
        """A checkout through billwatch, then the customer paying for it at the Stripe peer."""
        response = await self.http.post("/billing/checkout", headers=headers,
                                        json={**owner, "plan_code": plan})
        assert response.status_code == 201, response.text
        created = response.json()
        metadata = {"billwatch_checkout_id": created["id"], "billwatch_plan": plan,
                    "billwatch_owner_type": owner["owner_type"],
                    "billwatch_owner_id": owner["owner_id"]}
        if proxy_id is not None:
            metadata |= {"billwatch_proxy_id": str(proxy_id),
                         "billwatch_assignment_id": created["manager_assignment_id"]}
        customer = await self.customer_of(owner)
        method = await self.peer.v1.payment_methods.create_async(params={
            "type": "card", "card": {"number": "4242424242424242", "exp_month": 12,
                                     "exp_year": 2040, "cvc": "123"}})
        await self.peer.v1.payment_methods.attach_async(method.id, params={"customer": customer})
        await self.peer.v1.customers.update_async(
            customer, params={"invoice_settings": {"default_payment_method": method.id}})
        await self.peer.v1.subscriptions.create_async(params={
            "customer": customer, "items": [{"plan": f"billwatch_{plan}"}], "metadata": metadata})

    async def customer_of(self, owner: dict[str, str]) -> str:
        async with self.served.db.sessionmaker() as session:
            found = await session.scalar(select(StripeCustomer.stripe_customer_id).where(
                StripeCustomer.owner_id == uuid.UUID(owner["owner_id"])))
        assert found is not None
        return found

    async def payments(self) -> list[Transaction]:
        async with self.served.db.sessionmaker() as session:
            return list((await session.scalars(select(Transaction).where(
                Transaction.kind == TransactionKind.PAYMENT,
                Transaction.status == TransactionStatus.SUCCEEDED))).all())


async def drive_traffic(served: Served, peer_url: str) -> None:
    """A small billing day: three paid checkouts (one by a proxy), a refund, a cancel, mistakes."""
    factory = served.factory
    admin, alice, bob, proxy, clinic_admin = [
        await factory.user(role) for role in (Role.ADMIN, Role.PATIENT, Role.PATIENT, Role.PROXY,
                                               Role.PATIENT)]
    clinic = await factory.organization(billing_admins=[clinic_admin])
    peer = PaymentsGateway(make_settings("sqlite+aiosqlite://", peer_url)).client
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
        traffic = Traffic(served, http, peer)
        bob_owner = {"owner_type": "patient", "owner_id": str(bob.id)}
        assigned = await http.post(f"/patients/{bob.id}/billing-managers",
                                   headers=factory.headers(bob), json={"proxy_id": str(proxy.id)})
        assert assigned.status_code == 201, assigned.text
        await traffic.checkout(factory.headers(alice),
                               {"owner_type": "patient", "owner_id": str(alice.id)}, "basic_monthly")
        await traffic.checkout(factory.headers(proxy), bob_owner, "plus_monthly", proxy_id=proxy.id)
        await traffic.checkout(factory.headers(clinic_admin),
                               {"owner_type": "organization", "owner_id": str(clinic.id)},
                               "clinic_monthly")

        async def three_paid() -> bool:
            return len(await traffic.payments()) >= 3

        await wait_until(three_paid, what="three payments reported by webhook")
        await after_payments(http, traffic, factory.headers(admin), factory.headers(proxy), bob)


async def after_payments(http: httpx.AsyncClient, traffic: Traffic, admin: dict[str, str],
                         proxy: dict[str, str], bob: Any) -> None:
    payment = (await traffic.payments())[0]
    refund = await http.post(f"/admin/transactions/{payment.id}/refund", headers=keyed(admin),
                             json={"amount_cents": 500, "reason": "duplicate"})
    assert refund.status_code == 201, refund.text
    account = await http.get(f"/billing/owners/patient/{bob.id}", headers=proxy)
    assert account.status_code == 200, account.text
    live = [s for s in account.json()["subscriptions"] if s["status"] == "active"]
    assert live, account.text
    cancel = await http.post(f"/billing/subscriptions/{live[0]['id']}/cancel", headers=proxy,
                             json={"at_period_end": True})
    assert cancel.status_code == 200, cancel.text
    forged = await http.post("/webhooks/stripe", content=b'{"id": "evt_forged"}',
                             headers={"Stripe-Signature": "t=1,v1=00"})
    assert forged.status_code == 400
    assert (await http.post("/billing/checkout", json={})).status_code in (401, 422)
    assert (await http.get(f"/billing/owners/patient/{uuid.uuid4()}")).status_code == 401


# --- the test ----------------------------------------------------------------------------------

def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with a real number (NaN is what an empty ratio gives)."""
    return any(not math.isnan(float(series["value"][1])) for series in result)


async def scraped_after_traffic(prometheus: Prometheus) -> bool:
    checks = {"sum(billing_payments_succeeded_total)": 3, "sum(billing_refunds_issued_total)": 1,
              "sum(billing_subscriptions_cancelled_total)": 1,
              "sum(billing_webhooks_received_total)": 3, "sum(billing_mrr_cents)": 1,
              "sum(job:billing_payments_attempted:increase1h)": 1}
    for expr, at_least in checks.items():
        result = await prometheus.vector(expr)
        if not result or float(result[0]["value"][1]) < at_least:
            return False
    return True


class TestPrometheusEndToEnd:
    def test_the_deploy_files_are_there(self) -> None:
        assert DASHBOARDS and RULE_FILES
        assert any(e.core for e in panel_expressions())
        assert all(re.search(r"\w", e.expr) for e in panel_expressions() + rule_expressions())

    async def test_every_panel_and_rule_evaluates(
            self, system: tuple[Served, Prometheus], stripe_peer: LocalStripe) -> None:
        served, prometheus = system
        await drive_traffic(served, stripe_peer.url)
        await wait_until(lambda: scraped_after_traffic(prometheus),
                         what="prometheus to scrape the traffic", within=90)

        exposed = (await prometheus.http.get(f"{served.url}/metrics",
                                             headers=served.scrape_headers)).text
        assert label_offences(parse(exposed)) == []  # webhooks and refunds included

        targets = (await prometheus.http.get(f"{prometheus.url}/api/v1/targets")).json()
        [target] = targets["data"]["activeTargets"]
        assert (target["health"], target["lastError"]) == ("up", "")

        failures, core_with_data = [], dict.fromkeys(e.panel for e in panel_expressions() if e.core)
        for expression in panel_expressions() + rule_expressions():
            answer = await prometheus.query(expression.expr)
            if answer.get("status") != "success":
                failures.append(f"{expression.where}: {answer.get('error')}")
            elif expression.core and has_data(answer["data"]["result"]):
                core_with_data[expression.panel] = True
        assert failures == []
        assert [panel for panel, data in core_with_data.items() if not data] == []

        rules = (await prometheus.http.get(f"{prometheus.url}/api/v1/rules")).json()
        unhealthy = [(rule["name"], rule.get("lastError")) for group in rules["data"]["groups"]
                     for rule in group["rules"] if rule.get("health") != "ok"]
        assert unhealthy == []
        loaded = sum(len(group["rules"]) for group in rules["data"]["groups"])
        assert loaded == len(rule_expressions())
