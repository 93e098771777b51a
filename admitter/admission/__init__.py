"""Admission around the capacity model: the per-pool gate (decide, queue, release), where limits come
from (``LimitSource``; in-process ``LocalAllocator``) and per-entitlement usage counters."""
