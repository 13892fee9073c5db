"""Jobs: records and both stores (this process, Redis), their event logs and webhooks."""
