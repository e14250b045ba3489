"""The one masking constant of the pipeline, shared by attention (masked keys) and the sampler (removed tokens).

Finite on purpose: a fully masked attention row then gets a uniform softmax and a fully masked logit row a uniform
distribution, never NaN, and it sits below every sanitized logit (see `sampling.sanitize`).
"""

MASK_VALUE = -1e30
