"""Other kernels in qemu VMs: the same worker (kernel_runner/worker.py) inside a guest.

    catalog.py   which kernels there are (Debian cloud images), where they are cached, fetching them
    image.py     the guest's initramfs: busybox, Debian's python3.11, the worker, the kernel's modules
    machine.py   one qemu VM as a pool worker: cases and outcomes over virtio-serial, its console log
    selftest.py  backends that make the guest panic or hang on purpose (the VM smoke test)

Nothing here installs a kernel: packages are fetched with `apt-get download` and unpacked with
`dpkg -x` into the cache (~/.cache/diffuzz/kernels, or $DIFFUZZ_CACHE).
"""
