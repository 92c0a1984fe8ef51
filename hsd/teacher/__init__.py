"""The teacher: what it is shown (`template`, `prompt`) and how its pass runs (`prefix`), shared by the
trainer, the sampling helpers and the analysis."""
