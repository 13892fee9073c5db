"""Building, storing and loading diffusion pipelines: the embedded ``sd-tiny`` model, the BentoML
model store, and the one ``from_pretrained`` the service does at start-up."""
