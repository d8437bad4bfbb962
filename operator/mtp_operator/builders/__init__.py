"""Pure builders: each turns the typed ``MTPTrainingJob`` into one Kubernetes object (a dict).

No I/O, no clock, no randomness: the same job always gives the same objects, which is what makes
the operator's apply path idempotent and the builders testable as tables.
"""
