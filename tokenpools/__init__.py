"""token pools: capacity entitlements for multi-tenant LLM inference."""

__version__ = "0.1.0"
