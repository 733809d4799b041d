"""One sampler for every family; counter-based per-sample noise."""

from visgen.sampling.noise import CounterNoise
from visgen.sampling.sampler import Sampler, SamplingConfig, guidance_scales, resolve_compile, use_compile_cache

__all__ = ["CounterNoise", "Sampler", "SamplingConfig", "guidance_scales", "resolve_compile", "use_compile_cache"]
