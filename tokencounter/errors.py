"""The one error hierarchy of tokencounter, and its mapping to HTTP (status, JSON body, headers)."""

from __future__ import annotations


class TokenCounterError(Exception):
    """Base error: `status` and `code` say what the caller gets; the message says what to fix."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})


class InvalidJSON(TokenCounterError):
    code = "invalid_json"


class InvalidField(TokenCounterError):
    """A field is missing, has the wrong type or a value the counter cannot use."""

    code = "invalid_field"


class InvalidRole(TokenCounterError):
    code = "invalid_role"


class TooDeep(TokenCounterError):
    code = "too_deep"


class UnsupportedContent(TokenCounterError):
    """Well-formed input the counter cannot count exactly (e.g. image parts): refused, never undercounted."""

    status = 422
    code = "unsupported_content"


class UnknownModel(TokenCounterError):
    """The model's name names a family whose tokenizer is not here: counting it with another would be wrong."""

    status = 422
    code = "unknown_model"


class UpstreamError(TokenCounterError):
    """The model server answered with an error object: nothing was generated, so there is nothing to meter."""

    status = 422
    code = "upstream_error"


class TemplateRejected(TokenCounterError):
    """The model's own chat template refused the conversation (its `raise_exception`)."""

    status = 422
    code = "template_rejected"


class PayloadTooLarge(TokenCounterError):
    status = 413
    code = "payload_too_large"


class MethodNotAllowed(TokenCounterError):
    status = 405
    code = "method_not_allowed"


class Unauthorized(TokenCounterError):
    status = 401
    code = "unauthorized"


class NotFound(TokenCounterError):
    status = 404
    code = "not_found"


class TimeBudgetExceeded(TokenCounterError):
    status = 413
    code = "time_budget_exceeded"


class TokenizerUnavailable(TokenCounterError):
    """The tokenizer for this model could not be loaded; retrying later may succeed."""

    status = 503
    code = "tokenizer_unavailable"

    def __init__(self, message: str, *, retry_after: int = 30) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class HTTPProtocolError(TokenCounterError):
    """The HTTP layer refused the request itself (malformed, too large, ...), with the status it chose."""

    code = "bad_http_request"
    CODES = {
        413: PayloadTooLarge.code,
        429: "too_many_pipelined",
        431: "headers_too_large",
        503: "too_many_connections",
    }

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = self.CODES.get(status) or ("internal_error" if status >= 500 else self.code)


class InternalError(TokenCounterError):
    status = 500
    code = "internal_error"


def error_payload(err: TokenCounterError) -> tuple[int, dict, dict[str, str]]:
    """The HTTP status, JSON body and headers for `err`: the only place errors become HTTP."""
    return err.status, {"error": {"code": err.code, "message": err.message}}, err.headers
