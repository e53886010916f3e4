"""Offline evaluation of the detector: the planted-spike suite and the instability zoo (generated run sets), post hoc
scoring against the labeller's spikes, the baselines and peer rules it is compared with, the per-feature ceiling and
the real-world runs. Nothing here runs in a training loop."""
