"""Building, storing and loading diffusion pipelines: models built from code (``recipes``), the
BentoML model store, and the one ``from_pretrained`` the service does at start-up. Nothing here
knows about requests or HTTP."""
