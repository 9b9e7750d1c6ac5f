from .detector import DynamicATSS

__all__ = ["DynamicATSS"]
