"""stripe: measure the Stripe Observation of channel attention, and fold it away with ASR."""

__version__ = "0.1.0"
