"""The public process: the gateway, the work queue, the client of the hop to the generator
process, lifetimes, limits and encoding; jobs (``serving.jobs``) and the foreign APIs
(``serving.compat``). Never imports torch, diffusers or ``imagegen.engine``: an import-linter
contract in ``pyproject.toml`` says so in CI."""
