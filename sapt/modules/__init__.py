"""SALS building blocks: the mixture LoRA layer, the router, injection by name pattern, the SAPT model."""
