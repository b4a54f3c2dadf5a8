"""Domain errors that carry their HTTP status.

    BillwatchError            (500)
    ├── BadRequest            (400)
    ├── Unauthorized          (401)
    ├── Forbidden             (403)
    ├── NotFound              (404)
    ├── Conflict              (409)
    ├── PayloadTooLarge       (413)
    ├── Unprocessable         (422)
    ├── PaymentProviderError  (502)
    └── GatewayTimeout        (504)

Services raise these; one handler in ``app.py`` turns them into ``{"error", "detail"}`` JSON.
Messages pass through the redactor there, so no card data or secret can leave in an error.
"""

from __future__ import annotations


class BillwatchError(Exception):
    status_code = 500
    code = "internal_error"
    audited = False
    """True once the operation wrote its own failure row (a settled intent): the HTTP layer
    then writes no second one."""

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class BadRequest(BillwatchError):
    status_code = 400
    code = "bad_request"


class Unauthorized(BillwatchError):
    status_code = 401
    code = "unauthorized"


class Forbidden(BillwatchError):
    status_code = 403
    code = "forbidden"


class NotFound(BillwatchError):
    status_code = 404
    code = "not_found"


class Conflict(BillwatchError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(BillwatchError):
    status_code = 413
    code = "payload_too_large"


class Unprocessable(BillwatchError):
    status_code = 422
    code = "unprocessable"


class PaymentProviderError(BillwatchError):
    status_code = 502
    code = "payment_provider_error"


class GatewayTimeout(BillwatchError):
    """Stripe did not answer within the request's time budget; the outcome is not known yet."""

    status_code = 504
    code = "stripe_timeout"
