"""diffuzz: differential fuzzer for the Linux sk_msg / sockmap send path."""
