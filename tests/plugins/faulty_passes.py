"""Passes that misbehave on purpose, loaded through GPTEVAL_PASSES by the harness tests."""

import os
import signal
import time

import torch

from optimizers.base import Pass


class Raise(Pass):
    name = "test-raise"
    summary = "raises inside apply"

    def apply(self, engine, ctx):
        raise RuntimeError("this pass is broken on purpose")


class Segfault(Pass):
    name = "test-kill"
    summary = "kills its own process"

    def apply(self, engine, ctx):
        os.kill(os.getpid(), signal.SIGKILL)


class Hang(Pass):
    name = "test-hang"
    summary = "never returns"

    def apply(self, engine, ctx):
        while True:
            time.sleep(0.1)


class NaNLogits(Pass):
    name = "test-nan"
    summary = "poisons the weights with NaN"

    def apply(self, engine, ctx):
        with torch.no_grad():
            engine.model.transformer.ln_f.weight.fill_(float("nan"))
        return engine


class Slow(Pass):
    name = "test-slow"
    summary = "sleeps, so a run can be interrupted part-way"

    def apply(self, engine, ctx):
        time.sleep(float(os.environ.get("GPTEVAL_TEST_SLOW_S", "3")))
        return engine


class HangInLaterRound(Pass):
    name = "test-hang-later"
    summary = "measures normally, then hangs once it has been reset more than N times"

    def apply(self, engine, ctx):
        limit = int(os.environ.get("GPTEVAL_TEST_RESETS", "3"))
        reset, calls = engine.reset, [0]

        def counting_reset(*args, **kwargs):
            calls[0] += 1
            while calls[0] > limit:
                time.sleep(0.1)
            return reset(*args, **kwargs)

        engine.reset = counting_reset
        return engine
