"""Which worker serves which model: scheduler, registry, memory budget, events."""
