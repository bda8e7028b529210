"""The reference model of the kernel sk_msg send path (standard library only)."""
