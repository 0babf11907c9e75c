"""The errors of every ccr-box client: the agent, the hooks, the CLI, the console, the probe.

One small tree, so a caller decides "try again later" or "give up" without knowing which client
raised::

    CcrBoxError                      (ccr_box.errors)
    └── ClientError                  a call to a ccr-box server failed
        ├── ServerUnavailable        no usable answer: refused or failed connection, timeout,
        │                            5xx, an answer that is not ccr-box's JSON; retryable
        └── ServerRefused            the server answered 4xx; ``status`` and ``error`` (the
            │                        server's ``{"error"}`` text) are kept
            └── EndpointMissing      the router's own 404/405 (``Not found``): this server
                                     predates the endpoint (an older ccr-box)

Messages name the server URL (never with ``user:password@``) and never the API key. The probe
(:mod:`ccr_box.client.probe`) raises none of these: it reports what answered and what did not.
"""

from __future__ import annotations

from ccr_box.errors import CcrBoxError

# The router's answers for an unknown path or method (contract §2.1), not a route's refusal
# such as "Session not found".
ROUTER_ERRORS = ("Not found", "Method not allowed")


class ClientError(CcrBoxError):
    """A call to a ccr-box server failed."""


class ServerUnavailable(ClientError):
    """The server could not be reached, timed out, answered 5xx or did not speak ccr-box."""

    retryable = True


class ServerRefused(ClientError):
    """The server answered 4xx.

    ``error`` is its ``{"error"}`` text (or a description of the answer when it had none). The
    message is ``text`` when given (the operator tools show the server's words as they are),
    else ``server answered <status>: <error>``.
    """

    def __init__(self, status: int, error: str, text: str | None = None) -> None:
        self.status = status
        self.error = error
        super().__init__(text if text is not None else f"server answered {status}: {error}")


class EndpointMissing(ServerRefused):
    """This server does not offer the endpoint: the router answered 404/405 ``Not found``."""
