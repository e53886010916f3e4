"""The reference lab: a GLM-style model and a nanoGPT-style model, the shipped corpus and its blank-infilling data,
the reference trainer on the `stability.watch` pipeline, and `session.build_trainer` (how every caller makes a run)."""
