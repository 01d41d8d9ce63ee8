"""The local purge: what is due (planner), one batch in one transaction (batch), a whole
run over the policies (runner), legal holds, and the run log."""
