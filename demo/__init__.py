"""The demo, outside the runtime: bundled Topical-Chat conversations through the whole pipeline.

``data`` turns the dataset into contract events, ``run`` publishes them, runs a processor and
the API in the background (``background``) until zero lag, and prints the results.
"""
