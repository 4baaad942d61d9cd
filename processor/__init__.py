"""The processor: the runtime that moves events from the log into the projections, and its tools.

One package per concern: ``reading`` (the log), ``ownership`` (who owns which partition),
``applying`` (batches into the store), ``publishing`` (events into the log), ``api`` (HTTP),
``replay`` (rebuild from the log); ``runtime`` wires a processor process together, ``cli`` is
``python -m processor``. docs/architecture.md walks one event through them.
"""
