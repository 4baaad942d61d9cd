"""Reading the log: the stream-protocol client, chunks into records, live feeds, range reads.

``client`` speaks the RabbitMQ stream protocol; ``chunks`` turns a chunk into ``LogRecord``
values (``log_record``); ``reader`` keeps a live subscription per owned partition and feeds
each owner's ``feed``; ``ranges`` reads offset ranges in bulk for replay; ``probes`` asks where
each stream starts and ends; ``log_start`` tells a segment hole from a truncated log.
"""
