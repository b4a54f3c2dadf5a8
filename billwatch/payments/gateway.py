"""The only code that talks to Stripe, through the official SDK's async client.

Every call that creates an object or moves money passes an idempotency key derived from our own
operation id, so a retried request can never charge, refund or create twice. Stripe errors
leave here as :class:`PaymentProviderError` with a redacted message.

Every call has a total time budget (``stripe_request_budget_seconds``, the SDK's own retries
included), so a hanging Stripe costs a request at most that long:

    PaymentProviderError (502)   Stripe answered and refused: nothing happened there
    └── OutcomeUnknown (502)     no usable answer (connection lost, 5xx): it may have happened
    GatewayTimeout (504)         the budget ran out: it may have happened
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import stripe
import structlog

from billwatch.config import Plan, Settings
from billwatch.errors import GatewayTimeout, PaymentProviderError
from billwatch.payments import standins
from billwatch.redaction import redact_text

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class CheckoutSessionInfo:
    id: str
    url: str
    customer_id: str


@dataclass(frozen=True, slots=True)
class PortalSessionInfo:
    id: str
    url: str


@dataclass(frozen=True, slots=True)
class RefundInfo:
    id: str
    status: str
    amount_cents: int
    currency: str


@dataclass(frozen=True, slots=True)
class SubscriptionInfo:
    id: str
    status: str
    cancel_at_period_end: bool
    canceled_at: int | None


class OutcomeUnknown(PaymentProviderError):
    """Stripe gave no usable answer (connection lost, a 5xx): the call may or may not have acted."""


class StripeTimeout(GatewayTimeout):
    """The call's time budget ran out before Stripe answered."""


class _BudgetExceeded(stripe.APIConnectionError):
    """Raised inside the SDK's call when the budget ends, so every method maps it in one place."""


class BudgetedHTTPXClient(stripe.HTTPXClient):
    """The SDK's async HTTP client with one deadline over a call and all of its retries."""

    def __init__(self, *, budget_seconds: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.budget_seconds = budget_seconds

    async def request_with_retries_async(
            self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None,
            max_network_retries: int | None = None, *, _usage: list[str] | None = None,
    ) -> tuple[Any, int, Any]:
        try:
            async with asyncio.timeout(self.budget_seconds):
                return await super().request_with_retries_async(
                    method, url, headers, post_data, max_network_retries, _usage=_usage)
        except TimeoutError as error:
            message = f"no answer within {self.budget_seconds:g} s"
            raise _BudgetExceeded(message) from error  # type: ignore[no-untyped-call]


def refund_info(data: Mapping[str, Any]) -> RefundInfo:
    """Our view of a Stripe refund object (from an API answer or a webhook)."""
    return RefundInfo(str(data["id"]), str(data.get("status") or "pending"),
                      int(data["amount"]), str(data.get("currency") or ""))


@dataclass(frozen=True, slots=True)
class Coupon:
    """What a discount takes off each invoice: a percentage or a fixed amount."""

    id: str
    percent_off: int | None
    amount_off_cents: int | None
    currency: str | None


@dataclass(frozen=True, slots=True)
class DiscountInfo:
    coupon_id: str
    discount_id: str


def stripe_refused(error: BaseException) -> bool:
    """Whether Stripe answered a definite no, so nothing was created or changed there.

    Only a 4xx answer is a refusal. A lost connection, a timeout, a rate limit, a key still in
    flight or Stripe's own 5xx leave the outcome unknown:
    the caller keeps its intent pending and retries it with the same idempotency key.
    """
    cause = error.__cause__ if isinstance(error, PaymentProviderError) else error
    if not isinstance(cause, stripe.StripeError) or isinstance(cause, stripe.APIConnectionError):
        return False
    status = cause.http_status
    # 409: the same key is still in flight at Stripe; 429: not looked at. Both are retried.
    return isinstance(status, int) and 400 <= status < 500 and status not in (409, 429)


def _provider_error(operation: str, error: stripe.StripeError) -> PaymentProviderError | StripeTimeout:
    message = redact_text(error.user_message or str(error) or type(error).__name__)
    log.warning("stripe_call_failed", operation=operation, error_type=type(error).__name__,
                stripe_code=getattr(error, "code", None), message=message)
    if isinstance(error, _BudgetExceeded):
        return StripeTimeout(f"Stripe {operation}: {message}", code="stripe_timeout")
    if isinstance(error, stripe.APIConnectionError) or (
            isinstance(error, stripe.APIError) and (error.http_status or 500) >= 500):
        return OutcomeUnknown(f"Stripe {operation} failed: {message}", code="stripe_unreachable")
    return PaymentProviderError(f"Stripe {operation} failed: {message}",
                                code=f"stripe_{getattr(error, 'code', None) or 'error'}")


class PaymentsGateway:
    """Async Stripe access; one per process, shared by every request."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        base = {"api": settings.stripe_api_base} if settings.stripe_api_base else None
        self._client = stripe.StripeClient(
            settings.stripe_api_key.get_secret_value(),
            base_addresses=base,  # type: ignore[arg-type]
            http_client=BudgetedHTTPXClient(
                timeout=20, budget_seconds=settings.stripe_request_budget_seconds),
            max_network_retries=2,
        )
        self._standins = settings.use_local_standins

    @property
    def client(self) -> stripe.StripeClient:
        return self._client

    async def create_customer(self, *, email: str | None, name: str, metadata: dict[str, str],
                              idempotency_key: str) -> str:
        try:
            customer = await self._client.v1.customers.create_async(
                params={"email": email, "name": name, "metadata": metadata} if email else
                {"name": name, "metadata": metadata},
                options={"idempotency_key": idempotency_key},
            )
        except stripe.StripeError as error:
            raise _provider_error("customer creation", error) from error
        return str(customer.id)

    async def create_checkout_session(self, *, customer_id: str, plan: Plan, success_url: str,
                                      cancel_url: str, metadata: dict[str, str],
                                      idempotency_key: str, expires_at: int) -> CheckoutSessionInfo:
        if self._standins:
            session = standins.checkout_session(
                customer=customer_id, price=plan.stripe_price, success_url=success_url,
                cancel_url=cancel_url, metadata=metadata, base_url=self._settings.public_base_url,
                idempotency_key=idempotency_key, expires_at=expires_at)
            return CheckoutSessionInfo(session["id"], session["url"], customer_id)
        try:
            created = await self._client.v1.checkout.sessions.create_async(
                params={  # type: ignore[arg-type]
                    "mode": "subscription",
                    "customer": customer_id,
                    "line_items": [{"price": plan.stripe_price, "quantity": 1}],
                    "success_url": success_url,
                    "cancel_url": cancel_url,
                    "metadata": metadata,
                    "client_reference_id": metadata.get("billwatch_checkout_id"),
                    "subscription_data": {"metadata": metadata},
                    "expires_at": expires_at,
                },
                options={"idempotency_key": idempotency_key},
            )
        except stripe.StripeError as error:
            raise _provider_error("checkout session creation", error) from error
        return CheckoutSessionInfo(str(created.id), str(created.url), customer_id)

    async def create_portal_session(self, *, customer_id: str, return_url: str) -> PortalSessionInfo:
        if self._standins:
            session = standins.portal_session(customer=customer_id, return_url=return_url,
                                              base_url=self._settings.public_base_url)
            return PortalSessionInfo(session["id"], session["url"])
        try:
            created = await self._client.v1.billing_portal.sessions.create_async(
                params={"customer": customer_id, "return_url": return_url})
        except stripe.StripeError as error:
            raise _provider_error("portal session creation", error) from error
        return PortalSessionInfo(str(created.id), str(created.url))

    async def cancel_subscription(self, subscription_id: str, *, at_period_end: bool,
                                  idempotency_key: str) -> SubscriptionInfo:
        try:
            if at_period_end:
                sub = await self._client.v1.subscriptions.update_async(
                    subscription_id, params={"cancel_at_period_end": True},
                    options={"idempotency_key": idempotency_key})
            else:
                sub = await self._client.v1.subscriptions.cancel_async(
                    subscription_id, options={"idempotency_key": idempotency_key})
        except stripe.StripeError as error:
            raise _provider_error("subscription cancellation", error) from error
        data = sub.to_dict()
        return SubscriptionInfo(str(data["id"]), str(data["status"]),
                                bool(data.get("cancel_at_period_end")), data.get("canceled_at"))

    async def refund(self, *, charge_id: str | None, payment_intent_id: str | None,
                     amount_cents: int, reason: str, metadata: dict[str, str],
                     idempotency_key: str) -> RefundInfo:
        """Create a refund, once: no blind SDK retry, our resume looks it up first."""
        params: dict[str, Any] = {"amount": amount_cents, "metadata": {**metadata, "reason": reason}}
        if charge_id:
            params["charge"] = charge_id
        elif payment_intent_id:
            params["payment_intent"] = payment_intent_id
        else:
            raise PaymentProviderError("payment has no Stripe charge to refund", code="no_charge")
        stripe_reason = {"duplicate": "duplicate", "fraudulent": "fraudulent",
                         "requested_by_customer": "requested_by_customer"}.get(reason)
        # Named gap: localstripe refuses the `reason` parameter, so the stand-in keeps it in metadata.
        if stripe_reason and not self._standins:
            params["reason"] = stripe_reason
        try:
            refund = await self._client.v1.refunds.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key, "max_network_retries": 0})
        except stripe.StripeError as error:
            raise _provider_error("refund", error) from error
        return refund_info(refund.to_dict())

    async def find_refund(self, *, charge_id: str | None, payment_intent_id: str | None,
                          stripe_refund_id: str | None, billwatch_refund_id: str) -> RefundInfo | None:
        """The refund Stripe holds for our intent (by its id, else by our metadata), if any."""
        try:
            if stripe_refund_id:
                found = await self._client.v1.refunds.retrieve_async(stripe_refund_id)
                return refund_info(found.to_dict())
            params: dict[str, Any] = {"limit": 100}
            if charge_id:
                params["charge"] = charge_id
            elif payment_intent_id:
                params["payment_intent"] = payment_intent_id
            else:
                return None
            while True:
                page = await self._client.v1.refunds.list_async(params=params)  # type: ignore[arg-type]
                for item in page.data:
                    data = item.to_dict()
                    if (data.get("metadata") or {}).get("billwatch_refund_id") == billwatch_refund_id:
                        return refund_info(data)
                if not page.has_more or not page.data:
                    return None
                params["starting_after"] = page.data[-1].id
        except stripe.StripeError as error:
            raise _provider_error("refund lookup", error) from error

    async def apply_discount(self, subscription_id: str, *, coupon: Coupon,
                             metadata: dict[str, str], idempotency_key: str) -> DiscountInfo:
        """Create the override's own coupon and put it on the subscription's discounts."""
        await self._ensure_coupon(coupon, metadata=metadata, idempotency_key=f"{idempotency_key}:coupon")
        try:
            if self._standins:
                customer = await self._standin_customer(subscription_id)
                await self._client.v1.customers.update_async(
                    customer, params={"metadata": {
                        standins.discount_key(subscription_id): coupon.id}},
                    options={"idempotency_key": f"{idempotency_key}:standin"})
                return DiscountInfo(coupon.id, standins.discount_id(subscription_id, coupon.id))
            kept = await self._other_discounts(subscription_id, coupon.id)
            sub = await self._client.v1.subscriptions.update_async(
                subscription_id, params={  # type: ignore[arg-type]
                    "discounts": [*kept, {"coupon": coupon.id}], "expand": ["discounts"]},
                options={"idempotency_key": idempotency_key})
        except stripe.StripeError as error:
            raise _provider_error("discount", error) from error
        ours = [d for d in sub.to_dict().get("discounts") or []
                if isinstance(d, dict) and (d.get("coupon") or {}).get("id") == coupon.id]
        if not ours:
            raise PaymentProviderError("Stripe did not apply the coupon", code="stripe_no_discount")
        return DiscountInfo(coupon.id, str(ours[0]["id"]))

    async def remove_discount(self, subscription_id: str, *, coupon_id: str,
                              idempotency_key: str) -> None:
        """Take the override's coupon off the subscription, then delete the coupon."""
        try:
            if self._standins:
                customer = await self._standin_customer(subscription_id)
                await self._client.v1.customers.update_async(
                    customer, params={"metadata": {standins.discount_key(subscription_id): ""}},
                    options={"idempotency_key": f"{idempotency_key}:standin"})
            else:
                kept = await self._other_discounts(subscription_id, coupon_id)
                await self._client.v1.subscriptions.update_async(
                    subscription_id, params={"discounts": kept or ""},  # type: ignore[arg-type]
                    options={"idempotency_key": idempotency_key})
        except stripe.StripeError as error:
            raise _provider_error("discount removal", error) from error
        try:
            await self._client.v1.coupons.delete_async(coupon_id)
        except stripe.InvalidRequestError:
            pass  # already deleted by an earlier attempt: the removal above is what counts
        except stripe.StripeError as error:
            raise _provider_error("coupon deletion", error) from error

    async def pause_collection(self, subscription_id: str, *, behavior: str,
                               idempotency_key: str) -> None:
        """Stop collecting payment on the subscription (``pause_collection``)."""
        await self._set_pause(subscription_id, behavior, idempotency_key=idempotency_key)

    async def resume_collection(self, subscription_id: str, *, idempotency_key: str) -> None:
        """Collect payment again from the next invoice on."""
        await self._set_pause(subscription_id, None, idempotency_key=idempotency_key)

    async def _set_pause(self, subscription_id: str, behavior: str | None, *,
                         idempotency_key: str) -> None:
        try:
            if self._standins:
                customer = await self._standin_customer(subscription_id)
                await self._client.v1.customers.update_async(
                    customer, params={"metadata": {
                        standins.pause_key(subscription_id): behavior or ""}},
                    options={"idempotency_key": idempotency_key})
                return
            pause: Any = {"behavior": behavior} if behavior else ""
            await self._client.v1.subscriptions.update_async(
                subscription_id, params={"pause_collection": pause},
                options={"idempotency_key": idempotency_key})
        except stripe.StripeError as error:
            raise _provider_error("collection pause" if behavior else "collection resume",
                                  error) from error

    async def _ensure_coupon(self, coupon: Coupon, *, metadata: dict[str, str],
                             idempotency_key: str) -> None:
        params: dict[str, Any] = {"id": coupon.id, "duration": "forever", "metadata": metadata}
        if coupon.percent_off is not None:
            params["percent_off"] = coupon.percent_off
        else:
            params.update(amount_off=coupon.amount_off_cents, currency=coupon.currency)
        try:
            await self._client.v1.coupons.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key})
        except stripe.StripeError as error:
            if error.http_status != 409 and getattr(error, "code", None) != "resource_already_exists":
                raise _provider_error("coupon creation", error) from error
            # A retry after a lost answer: the coupon exists under our id; use it as it is.

    async def _other_discounts(self, subscription_id: str, coupon_id: str) -> list[dict[str, str]]:
        """The subscription's discounts other than ours, so updating the list keeps them."""
        sub = (await self._client.v1.subscriptions.retrieve_async(
            subscription_id, params={"expand": ["discounts"]})).to_dict()
        return [{"discount": str(d["id"])} for d in sub.get("discounts") or []
                if isinstance(d, dict) and (d.get("coupon") or {}).get("id") != coupon_id]

    async def _standin_customer(self, subscription_id: str) -> str:
        sub = await self._client.v1.subscriptions.retrieve_async(subscription_id)
        customer = sub.to_dict()["customer"]
        return str(customer["id"] if isinstance(customer, dict) else customer)

    async def retrieve_subscription(self, subscription_id: str) -> dict[str, Any]:
        try:
            sub = await self._client.v1.subscriptions.retrieve_async(subscription_id)
        except stripe.StripeError as error:
            raise _provider_error("subscription retrieval", error) from error
        return sub.to_dict()

    async def iter_events(self, *, since: datetime) -> AsyncIterator[dict[str, Any]]:
        """Every event Stripe still holds since ``since`` (the Events API keeps 30 days)."""
        params: dict[str, Any] = {"limit": 100, "created": {"gte": int(since.timestamp())}}
        try:
            while True:
                page = await self._client.v1.events.list_async(params=params)  # type: ignore[arg-type]
                for event in page.data:
                    yield event.to_dict()
                if not page.has_more or not page.data:
                    return
                params["starting_after"] = page.data[-1].id
        except stripe.StripeError as error:
            raise _provider_error("event listing", error) from error

    async def ensure_catalogue(self, plans: list[Plan]) -> None:
        """Create any missing product and plan, so a fresh Stripe peer knows our prices."""
        for plan in plans:
            try:
                await self._client.v1.plans.retrieve_async(plan.stripe_price)
                continue
            except stripe.InvalidRequestError:
                pass
            except stripe.StripeError as error:
                raise _provider_error("plan lookup", error) from error
            try:
                product = await self._client.v1.products.create_async(
                    params={"name": plan.name},
                    options={"idempotency_key": f"product:{plan.stripe_price}"})
                await self._client.v1.plans.create_async(
                    params={"id": plan.stripe_price, "product": product.id,
                            "amount": plan.amount_cents, "currency": plan.currency,
                            "interval": plan.interval.value},
                    options={"idempotency_key": f"plan:{plan.stripe_price}"})
            except stripe.StripeError as error:
                raise _provider_error("catalogue sync", error) from error
            log.info("stripe_plan_created", plan=plan.code, stripe_price=plan.stripe_price)
