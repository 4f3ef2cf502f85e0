"""The names the ops, the reference and both kernel sets share, defined once.

A string option reaches a kernel as an integer code: its index in these tuples (KL_ESTIMATORS.index("k3")
is 2). A loss returns its statistics as one tensor in the order of its STATS tuple. The C++ kernels
mirror the codes and the counts in enums (csrc/cpu/kl_penalty.h, masked_reduction.h, ppo_*_loss.h).
"""
KL_ESTIMATORS = ("k1", "k2", "k3", "abs")
REDUCTIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")
POLICY_STATS = ("clip_frac", "approx_kl", "ratio_mean")
VALUE_STATS = ("clip_frac",)
