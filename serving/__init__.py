"""Run exported models: the TorchServe handler (online) and the batch job (offline)."""
