"""Measurements: pure functions over an engine and data that return raw samples and
statistics; no printing, no files.  Definitions are in each module's docstrings.

stats     Stats of raw samples (median, IQR, p90/p99, bootstrap CI of the median)
timer     Clock (perf_counter after a sync, or CUDA events) and the repeat rule
latency   ttft_ms, tpot_ms, decode_step_ms, decode_tok_s, prefill_tok_s
memory    peak_rss_mb per phase, peak_device_mb
quality   perplexity (sliding window), bpb, next_token_acc, cloze and multiple choice
fidelity  kl_mean, top1_agree, max_abs_logit_diff, first divergent greedy token
ceilings  memory bandwidth and matmul throughput of the machine, and fractions of them
host      cpu_steal_pct: CPU time the hypervisor gave to other guests while measuring
"""
