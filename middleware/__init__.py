"""ASGI middlewares mounted by ``service.py`` through ``add_asgi_middleware``: one pure ASGI
class per module (logging, auth, timing). The middleware issue fills this package."""
