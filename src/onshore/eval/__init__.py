"""Closed-loop evaluation in simulators: success rates, tracking errors, reports and plots."""
