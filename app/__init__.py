"""The assembly beside ``service.py``: the middleware stack, the docs routes, the playground
mount and logging. Imports ``imagegen`` and ``middleware``; nothing imports it but the
service."""
