"""Errors of the demo, under the product's one root (``processor.errors.ProcessorError``)."""

from __future__ import annotations

from processor.errors import ProcessorError


class DemoError(ProcessorError):
    """The demo could not complete a step (the message says which and where to look)."""


class DemoDataError(DemoError):
    """The dataset has a shape or a label the converter does not know; the message says where."""


class BackgroundError(DemoError):
    """A background process did not start or did not stop in time (names its log file)."""
