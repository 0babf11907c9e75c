"""Everything that talks to a ccr-box server over HTTP or WebSocket, for the other processes.

- :mod:`~ccr_box.client.errors`: the one error tree (unavailable vs refused) every client raises.
- :mod:`~ccr_box.client.http`: the shared session, timeout, bearer header and answer handling.
- :mod:`~ccr_box.client.admin`: the operator API client of the CLI and the console.
- :mod:`~ccr_box.client.events`: the one reader of the operator event stream.
- :mod:`~ccr_box.client.agent`: the agent's and the hooks' session and notification calls.
- :mod:`~ccr_box.client.probe`: "how is that server?" for ``init`` and ``doctor``.
- :mod:`~ccr_box.client.present`: inert, short texts for showing what the API returns.

No Textual, no server, no database here; importing this package imports nothing else (the CLI
imports the client it needs when a command runs).
"""
