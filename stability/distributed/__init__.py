"""Multi-rank runs: the `--nproc` launcher and process groups (launch.py), what each rank computes and writes
(data_parallel.py) and one run in the store from many ranks (rank_sink.py)."""
