"""Getting events into the log: the topology, the confirmed publisher, and publishing a file.

``topology`` declares the exchange and the partition streams; ``publisher`` publishes with
confirms and ``mandatory``; ``publish_file`` checks and publishes a JSON Lines file;
``broker_errors`` turns pika's nested connection errors into one readable reason.
"""
