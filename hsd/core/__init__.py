"""The HSD method itself, pure torch and the standard library: who is whose peer (`peers`), what the
teacher sees (`contexts`), where credit lands (`divergence`), and the per-token losses (`losses`).
"""
