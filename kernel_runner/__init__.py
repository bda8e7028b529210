"""Everything that touches the kernel (standard library + pyelftools)."""
