"""Pure ASGI middlewares, one class per module, each with its options checked in ``__init__``.

``app.stack`` puts them in order; ``paths`` holds the one list of public and probe paths
they share. Nothing here imports ``imagegen`` or ``models``.
"""
