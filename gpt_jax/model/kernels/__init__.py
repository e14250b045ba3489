"""Hand-written kernels for backends where XLA has no fitting one (called through XLA's FFI)."""
