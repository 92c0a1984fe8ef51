"""The HSD method itself, pure torch and the standard library: who is whose peer (`peers`), what the
teacher sees (`contexts`), each rollout's teacher (`plan`), the first divergence tau, where credit lands and
coverage (`tau`), and the per-token losses (`losses`).
"""
