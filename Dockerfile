# diffuzz in a container: the same set-up as a bare machine (scripts/setup.sh is the one source
# of truth), for long campaigns on any Linux host.  The kernel under test is the HOST's kernel:
# a container shares it.  Running needs BPF privileges; see docs/long-runs.md ("Docker").
#
#   docker build -t diffuzz .
#   docker run --rm --privileged -v "$PWD/runs:/runs" diffuzz diffuzz fuzz --help
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
ENTRYPOINT ["/bin/sh", "-c", "bash scripts/setup.sh >&2 && exec \"$@\"", "diffuzz-entry"]
CMD ["diffuzz", "fuzz"]
