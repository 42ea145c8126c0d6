"""SALS building blocks: the per-task PET blocks (`blocks/`: the interface, the registry, one folder per block
type: LoRA, prompt tuning, IA3), the router, the SAPT model."""
