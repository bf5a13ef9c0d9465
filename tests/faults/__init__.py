"""Fault injection: real processes, real servers, and the faults production meets."""
