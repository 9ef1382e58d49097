"""Revenue flows: failed-payment recovery, refund triage, churn signals.

Code decides what happens (which flow runs, what the refund decision is, which signals
exist); a persona gathers context with its tools and writes the prose. Every flow run has
an idempotency key, so a duplicate trigger or a crashed worker never doubles the work.
"""
