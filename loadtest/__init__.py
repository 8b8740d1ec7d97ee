"""Load tests: locustfile, SLO gate, workload and run script (see loadtest/run.py)."""
