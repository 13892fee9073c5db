"""Request handling for the image-generation service: settings, schemas, generation, encoding."""
