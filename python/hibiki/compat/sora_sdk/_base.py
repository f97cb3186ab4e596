"""Helpers shared by the sora-sdk compatibility classes."""

from __future__ import annotations

from typing import Any, TypeVar

__all__ = ["no_constructor", "wrap"]

W = TypeVar("W")


def no_constructor(obj: object) -> None:
    """Refuse direct construction the way sora-sdk (nanobind) does.

    sora-sdk's tracks, frames and connections come from factories and
    callbacks only; constructing one by hand raises ``TypeError`` there, so it
    does here. The SDK itself builds them with :func:`wrap`.
    """
    cls = type(obj)
    raise TypeError(f"{cls.__module__}.{cls.__qualname__}: no constructor defined!")


def wrap(cls: type[W], **attrs: Any) -> W:
    """Create an instance of ``cls`` without calling ``__init__`` and set ``attrs`` on it."""
    obj = object.__new__(cls)
    for name, value in attrs.items():
        object.__setattr__(obj, name, value)
    return obj
