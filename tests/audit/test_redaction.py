"""The redactor, tried with card numbers in every format and nesting, and with benign data."""

from __future__ import annotations

import json
import re
import string
import uuid
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billwatch.audit.redaction import REDACTED, luhn_valid, redact, redact_text

SEPARATORS = st.sampled_from([" ", "-", "  ", " - ", "--", "\u00a0", ""])
NO_DIGITS = st.text(alphabet=st.characters(blacklist_categories=("Nd", "Cs"), max_codepoint=0x2FFF),
                    max_size=30)


@st.composite
def pans(draw: st.DrawFn) -> str:
    """A Luhn-valid card number of 13 to 19 digits."""
    length = draw(st.integers(13, 19))
    body = draw(st.text(alphabet=string.digits, min_size=length - 1, max_size=length - 1))
    check = next(d for d in string.digits if luhn_valid(body + d))
    return body + check


@st.composite
def formatted(draw: st.DrawFn, pan: str) -> str:
    """The number grouped any way at all, with spaces, dashes or both between groups."""
    out, rest = [], pan
    while rest:
        size = draw(st.integers(1, 7))
        out.append(rest[:size])
        rest = rest[size:]
        if rest:
            out.append(draw(SEPARATORS))
    return "".join(out)


def digits_of(value: Any) -> str:
    return re.sub(r"\D", "", json.dumps(value, ensure_ascii=False))


def leaked(pan: str, redacted: Any) -> bool:
    """Whether more than the last four digits of ``pan`` can still be read."""
    return pan[:-4] in digits_of(redacted)


def nest(draw: st.DrawFn, leaf: Any) -> Any:
    """``leaf`` buried in dicts and lists, sometimes as a key."""
    value = leaf
    for _ in range(draw(st.integers(0, 4))):
        shape = draw(st.sampled_from(["dict", "list", "key"]))
        if shape == "dict":
            value = {draw(st.sampled_from(["note", "payload", "data", "detail"])): value}
        elif shape == "list":
            value = ["x", value, None]
        elif isinstance(value, (str, int)) and not isinstance(value, bool):
            value = {str(value): "v"}
    return value


class TestCardNumbers:
    @given(pan=pans(), data=st.data())
    @settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
    def test_no_formatting_or_surrounding_text_lets_one_through(self, pan: str,
                                                               data: st.DataObject) -> None:
        text = data.draw(NO_DIGITS) + data.draw(formatted(pan)) + data.draw(NO_DIGITS)
        cleaned = redact_text(text)
        assert not leaked(pan, cleaned), (text, cleaned)
        assert pan[-4:] in digits_of(cleaned)

    @given(pan=pans(), data=st.data())
    @settings(max_examples=300)
    def test_no_nesting_lets_one_through(self, pan: str, data: st.DataObject) -> None:
        leaf = data.draw(st.sampled_from(["text", "int", "key"]))
        value: Any = (int(pan) if leaf == "int" and pan[0] != "0" else
                      {data.draw(formatted(pan)): 1} if leaf == "key" else
                      f"card {data.draw(formatted(pan))} ok")
        nested = nest(data.draw, value)
        cleaned = redact(nested)
        assert not leaked(pan, cleaned), (nested, cleaned)
        json.dumps(cleaned)  # what comes out is plain JSON

    @given(pans=st.lists(pans(), min_size=2, max_size=4), glue=st.sampled_from([" ", ", ", "/"]))
    def test_several_numbers_side_by_side(self, pans: list[str], glue: str) -> None:
        cleaned = redact_text(glue.join(pans))
        assert len(digits_of(cleaned)) <= 4 * len(pans), cleaned

    def test_card_fields_keep_the_last_four(self) -> None:
        card = {"number": "4242 4242 4242 4242", "exp_month": 12, "cvc": "123", "brand": "visa"}
        assert redact({"card": card, "payment_method": "pm_1Nabc"}) == {
            "card": {"number": "****4242", "exp_month": 12, "brand": "visa"},
            "payment_method": REDACTED}
        assert redact({"card_number": 4111111111111111}) == {"card_number": "****1111"}


class TestSecrets:
    @given(body=st.text(alphabet=string.ascii_letters + string.digits, min_size=8, max_size=40),
           prefix=st.sampled_from(["sk_live_", "sk_test_", "rk_live_", "whsec_", "tok_"]),
           around=NO_DIGITS)
    def test_stripe_secrets_and_tokens_never_survive(self, body: str, prefix: str,
                                                     around: str) -> None:
        secret = prefix + body
        cleaned = redact({"detail": f"{around} {secret} {around}", "nested": [secret]})
        assert secret not in json.dumps(cleaned)

    @given(cvv=st.text(alphabet=string.digits, min_size=3, max_size=4),
           key=st.sampled_from(["cvc", "CVV", "card[cvc]", "cvv2", "security_code", "Card-CVC"]))
    def test_cvv_fields_are_dropped_at_any_depth(self, cvv: str, key: str) -> None:
        cleaned = redact({"a": [{"card": {key: cvv, "last4": "4242"}}]})
        assert cleaned == {"a": [{"card": {"last4": "4242"}}]}
        assert cvv not in redact_text(f"cvc: {cvv}")

    def test_authorization_headers_and_bearer_tokens(self) -> None:
        headers = {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "Accept": "x"}
        assert redact(headers) == {"Authorization": REDACTED, "Accept": "x"}
        assert "s3cr3t" not in redact_text("GET / Authorization: Basic dXNlcjpzM2NyM3Q=")
        assert redact_text("the basic monthly plan") == "the basic monthly plan"

    def test_payment_methods_are_hidden_only_beside_card_data(self) -> None:
        assert redact({"payment_method": "pm_1Nabc"}) == {"payment_method": "pm_1Nabc"}
        assert REDACTED in redact_text("pm_1Nabc used 4242 4242 4242 4242")


class TestControlCharacters:
    @given(text=st.text(max_size=60))
    def test_one_event_is_one_line(self, text: str) -> None:
        cleaned = redact_text(text)
        assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", cleaned), cleaned

    def test_forged_log_lines_are_escaped(self) -> None:
        assert redact_text("ok\r\nlevel=info event=refund_approved") == (
            "ok\\x0d\\x0alevel=info event=refund_approved")


STRIPE_PREFIXES = ["ch", "in", "sub", "cus", "pi", "re", "evt", "price", "prod", "ii", "txn"]


class TestBenignData:
    @given(value=st.one_of(
        st.uuids().map(str),
        st.integers(min_value=-10**11, max_value=10**11),
        st.integers(min_value=0, max_value=4_102_444_800),  # epoch seconds
        st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
        st.dates().map(str),
        st.decimals(min_value=0, max_value=10**9, places=2).map(str),
        st.builds(lambda p, b: f"{p}_{b}", st.sampled_from(STRIPE_PREFIXES),
                  st.text(alphabet=string.ascii_letters + string.digits, min_size=8, max_size=28)
                  .filter(lambda b: not re.search(r"\d{13}", b))),
        st.sampled_from(["billing.refund.issued", "usd", "plus_monthly", "card_declined",
                         "service_issue", "203.0.113.7", "2001:db8::1"]),
    ))
    def test_ids_amounts_and_times_pass_unchanged(self, value: Any) -> None:
        assert redact({"value": value, "list": [value]}) == {"value": value, "list": [value]}

    def test_a_typical_refund_row_is_untouched(self) -> None:
        data = {"amount_cents": 1500, "currency": "usd", "reason": "service_issue",
                "refund_transaction_id": str(uuid.uuid4()), "stripe_refund_id": "re_3MqLiJ2eZvKYlo2C",
                "refundable_remaining_cents": 0, "note": "video visit dropped twice"}
        assert redact(data) == data
