"""GCE's error JSON, so the official clients raise NotFound / Conflict / PreconditionFailed / ..."""

from __future__ import annotations

HTTP_REASON_PHRASES = {
    400: "BAD REQUEST",
    403: "FORBIDDEN",
    404: "NOT FOUND",
    405: "METHOD NOT ALLOWED",
    409: "CONFLICT",
    412: "PRECONDITION FAILED",
    500: "INTERNAL SERVER ERROR",
    503: "SERVICE UNAVAILABLE",
}


class ApiError(Exception):
    """Answered as `{"error": {"code", "message", "errors": [...]}}` (docs/gce-behaviour.md,
    "API errors")."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message

    def body(self) -> dict:
        return {
            "error": {
                "code": self.status,
                "message": self.message,
                "errors": [{"message": self.message, "domain": "global", "reason": self.reason}],
            }
        }


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
