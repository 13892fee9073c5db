"""Request handling for the image-generation service: settings, schemas, generation, encoding."""

__version__ = "0.1.0"
