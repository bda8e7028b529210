# diffuzz in a container: the same set-up as a bare machine (scripts/setup.sh is the one source
# of truth), for long campaigns on any Linux host.  The kernel under test is the HOST's kernel:
# a container shares it.  Running needs BPF privileges; see docs/long-runs.md ("Docker").
#
#   docker build -t diffuzz .
#   docker run --rm --privileged --pid=host -v "$PWD/runs:/runs" diffuzz diffuzz fuzz --help
#
# --pid=host is needed by every kernel case: the sk_msg program takes its thread id from
# bpf_get_current_pid_tgid(), an id in the host's PID namespace, while the worker knows its send
# threads by gettid() in the container's.  In a private PID namespace they never match (every
# case would differ in runs[*].ctx.task), so the kernel workers refuse to start there
# (kernel_runner/pidns.py) and the entrypoint warns at once.
FROM debian:bookworm

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/diffuzz/.venv/bin:$PATH
WORKDIR /opt/diffuzz
COPY . .

# Debian packages, the venv and the package, the BPF objects: exactly what the README runs.
RUN bash scripts/setup.sh && rm -rf /var/lib/apt/lists/*

# Campaign work directories and shared corpora live outside the image.
VOLUME ["/runs"]

# setup.sh runs again at start (about a second): the host's kernel release is only known now,
# and bcc (the confirmation backend) needs /lib/modules/$(uname -r)/build linked for it.
# 4026531836 is the initial PID namespace's fixed inode (PROC_PID_INIT_INO).
ENTRYPOINT ["/bin/sh", "-c", "[ \"$(readlink /proc/self/ns/pid)\" = 'pid:[4026531836]' ] || echo 'diffuzz-entry: WARNING: private PID namespace: run with --pid=host, or every kernel case differs in runs[*].ctx.task (see the Dockerfile)' >&2; bash scripts/setup.sh >&2 && exec \"$@\"", "diffuzz-entry"]
CMD ["diffuzz", "fuzz"]
