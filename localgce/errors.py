"""GCE's error JSON, so the official clients raise NotFound / Conflict / PreconditionFailed / ..."""

from __future__ import annotations

HTTP_REASON_PHRASES = {
    400: "BAD REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT FOUND",
    405: "METHOD NOT ALLOWED",
    409: "CONFLICT",
    412: "PRECONDITION FAILED",
    415: "UNSUPPORTED MEDIA TYPE",
    500: "INTERNAL SERVER ERROR",
    501: "NOT IMPLEMENTED",
    503: "SERVICE UNAVAILABLE",
}


class ApiError(Exception):
    """Answered as `{"error": {"code", "message", "errors": [...]}}` (docs/gce-behaviour.md,
    "API errors")."""

    # Set on the errors Google's front end answers itself (401/403 on credentials): the
    # canonical status name, google.rpc details, and the header the error is about.
    status_name: str | None = None
    details: list | None = None
    location: str | None = None
    # `errors[].domain`: "global" for most errors, "usageLimits" for rate limits.
    domain: str = "global"

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message

    def body(self) -> dict:
        item = {"message": self.message, "domain": self.domain, "reason": self.reason}
        if self.location:
            item.update(location=self.location, locationType="header")
        error = {"code": self.status, "message": self.message, "errors": [item]}
        if self.status_name:
            error["status"] = self.status_name
        if self.details:
            error["details"] = self.details
        return {"error": error}


def not_found(resource_path: str) -> ApiError:
    return ApiError(404, "notFound", f"The resource '{resource_path}' was not found")


def already_exists(resource_path: str) -> ApiError:
    return ApiError(409, "alreadyExists", f"The resource '{resource_path}' already exists")


def invalid(message: str) -> ApiError:
    return ApiError(400, "invalid", message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "badRequest", message)


def not_ready(message: str) -> ApiError:
    return ApiError(400, "resourceNotReady", message)


def fingerprint_mismatch() -> ApiError:
    return ApiError(
        412,
        "conditionNotMet",
        "Supplied fingerprint does not match current metadata fingerprint.",
    )


def method_not_allowed(method: str, path: str) -> ApiError:
    return ApiError(405, "httpMethodNotAllowed", f"HTTP method {method} is not supported by {path}")


def not_implemented(method_id: str) -> ApiError:
    """A method of Google's Compute v1 document that localgce does not model."""
    err = ApiError(
        501,
        "notImplemented",
        f"Method {method_id} is not implemented by localgce (docs/localgce.md lists the "
        "methods it models).",
    )
    err.status_name = "UNIMPLEMENTED"
    return err
