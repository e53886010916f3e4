"""Multi-rank runs: the `--nproc` launcher and process groups (launch.py), what each rank computes and writes
(data_parallel.py; single_process.py is its do-nothing stand-in for one process) and one run in the store from
many ranks (rank_sink.py)."""
