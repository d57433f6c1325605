"""Targets (host, arm_cpu, hexagon): lowering and schedules. Built by later issues."""
