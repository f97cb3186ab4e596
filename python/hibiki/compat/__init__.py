"""Compatibility layers: other SDKs' APIs on top of Hibiki's one implementation.

* :mod:`hibiki.compat.sora_sdk` - every public name of the official
  ``sora-sdk`` Python package (2025.4), so that a sora-sdk program runs
  against ``hibiki serve`` (or any Sora-protocol server) by changing only
  ``from sora_sdk import ...`` to ``from hibiki.compat.sora_sdk import ...``.
"""
