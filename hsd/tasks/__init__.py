"""Tasks and verifiers: math answers, code in a sandbox, reasoning-gym, the testbed chain task, datasets."""
