"""The exception tree of the aggregator.

::

    AggregatorError
    ├── ConfigError                 a configuration file or value is wrong
    ├── MigrationError              sql/ migrations cannot be applied
    ├── NotFound                    an API resource does not exist (404)
    ├── BadRequest                  an API request is malformed (400)
    ├── DatabaseUnavailable         PostgreSQL cannot be reached (503)
    └── UpstreamError               something went wrong talking to an upstream registry
        ├── UpstreamUnavailable     timeouts, connection errors, 5xx, 429 after retries
        ├── UpstreamHTTPError       any other non-2xx answer
        └── InvalidUpstreamData     an answer that cannot be read as TRS
"""

from __future__ import annotations


class AggregatorError(Exception):
    """Something went wrong in the aggregator."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        """The message, as the API and the run records show it."""
        return str(self)


class ConfigError(AggregatorError):
    """The configuration is invalid."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)


class MigrationError(AggregatorError):
    """The database migrations cannot be applied."""


class NotFound(AggregatorError):
    """The requested resource was not found."""

    status = 404


class BadRequest(AggregatorError):
    """The request is not valid."""

    status = 400


class DatabaseUnavailable(AggregatorError):
    """The database cannot be reached."""

    status = 503


class UpstreamError(AggregatorError):
    """An upstream registry could not be harvested."""

    def __init__(
        self, message: str | None = None, *, url: str = "", status: int | None = None
    ) -> None:
        self.url = url
        self.status = status
        super().__init__(message)


class UpstreamUnavailable(UpstreamError):
    """The upstream registry did not answer in time or answered with a server error."""


class UpstreamHTTPError(UpstreamError):
    """The upstream registry answered with an unexpected HTTP status."""


class InvalidUpstreamData(UpstreamError):
    """The upstream registry answered with data that is not valid TRS."""
