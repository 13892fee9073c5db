"""The generator process: the pipelines and everything that touches them (loading, modes,
adapters, schedulers, progress, the per-model catalog). The only part of ``imagegen`` that
imports torch and diffusers; the public process reaches it only through the hop
(``imagegen.hop``)."""
