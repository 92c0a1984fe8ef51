"""`hsd bench`: `fixtures` (model shapes, tokenizer, the fixed batch, scripted rollouts; shared with the
tests), `meter` (memory, turns, phase clocks), `step` (GRPO / OPSD / HSD), `vs_trl` (against TRL's SDPO),
`cli` (the command)."""
