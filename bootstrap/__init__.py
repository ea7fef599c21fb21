"""grpo-bootstrap: from a rented GPU to a GRPO-trained reasoning model in one command."""

__version__ = "0.1.0"
