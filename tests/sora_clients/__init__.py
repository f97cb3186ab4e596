"""Driver scripts for the official sora-sdk client, and the harness that runs them.

Each sora-sdk client runs in its own process (``sora_peer.py``); the test
talks to it through :class:`sora_clients.harness.SoraPeer`.
"""
