"""The testbed: a small model pretrained here on the chain task, where the ground truth of every error is known.
Built and cached by `hsd.testbed.model`, measured by `hsd.testbed.measure`, driven by `hsd testbed`.
"""
