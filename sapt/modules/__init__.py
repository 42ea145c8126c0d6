"""SALS building blocks: the per-task PET blocks (`blocks/`: the interface, LoRA's mixture layer, injector,
merge and losses), the router, the SAPT model."""
