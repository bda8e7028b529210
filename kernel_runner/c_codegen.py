"""A Case's program as readable BPF C: the independent twin of the interpreter program.

The interpreter (bpf/interp.bpf.c) reads a script from a map at run time.  This module writes
the same behaviour out as straight-line C, one function per step list, so that a finding can
be confirmed by a program that shares no code with the interpreter, and so that it reads
like the program a user would write (a reproducer).  What the program does is fixed by
docs/execution.md "Program runs":

- run i (counted over the whole case by an atomic counter in record slot 0) executes step
  list min(i, last), each step in order, then returns its verdict;
- every run fills a `struct run_record` (slot 1 + i for the first MAX_RUN_RECORDS runs, a
  scratch slot after that): msg->size and data_end - data on entry, per step the helper's
  return (s64) and data_end - data after it, msg->size on exit, the verdict, the
  struct sk_msg_md context fields, and the thread id.

Two flavours share the program body and differ only in how the two maps are named:

- `bcc_source`: for bcc (kernel_runner/bcc_backend.py).  Both maps are created by the runner
  and named by placeholder fds (`bpf_pseudo_fd(1, ...)`, the bcc 0.26 way to name an outside
  map); the backend patches the real fds into the compiled instructions at each load, so one
  compile serves every case with the same program text.
- `libbpf_source`: a standalone `.bpf.c` with the maps declared in SEC(".maps"), for a
  finding's reproducer (clang -O2 -target bpf -c; bpftool or any libbpf loader).

The record layout is RECORD (a struct format) here and `struct run_record` in the C; both
are written from the one FIELDS table below so they cannot drift apart.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from diffuzz.contract.case import (
    LAST_RC,
    SK_DROP,
    SK_PASS,
    WRITE_MAX_OFFSET,
    ApplyBytes,
    Case,
    CorkBytes,
    Invocation,
    PopData,
    PullData,
    PushData,
    Redirect,
    Step,
    Write,
)
from diffuzz.contract.outcome import MAX_RUN_RECORDS, RUN_HEAD

MAX_STEPS = 16  # diffuzz.contract.case.MAX_STEPS: the per-run step arrays
RECORD_SLOTS = MAX_RUN_RECORDS + 2  # slot 0: the run counter; 1..64: runs 0..63; 65: scratch for later runs
SCRATCH_SLOT = MAX_RUN_RECORDS + 1
PROG_NAME = "msg_verdict"

# Placeholder fds in the bcc flavour (ld_imm64 src_reg=BPF_PSEUDO_MAP_FD, imm=placeholder):
# values no process has open, so an unpatched program fails to load instead of reaching a
# wrong map.
RECORDS_FD_PLACEHOLDER = 0x7FFE_0001
SOCK_MAP_FD_PLACEHOLDER = 0x7FFE_0002


# (C declaration, struct format) in layout order; the struct is naturally aligned and packed.
FIELDS: tuple[tuple[str, str], ...] = (
    ("__u64 runs;          /* slot 0 only: runs so far (atomic) */", "Q"),
    ("__u32 size_in;       /* msg->size on entry */", "I"),
    ("__u32 win_in;        /* data_end - data on entry */", "I"),
    ("__u32 size_out;      /* msg->size on exit */", "I"),
    ("__u32 verdict;       /* the value returned */", "I"),
    ("__u32 family;", "I"),
    ("__u32 local_port;    /* host order (UAPI) */", "I"),
    ("__u32 remote_port;   /* network order (UAPI) */", "I"),
    ("__u32 tid;           /* bpf_get_current_pid_tgid() & 0xffffffff */", "I"),
    ("__u32 local_ip[4];   /* local_ip4 in [0], or local_ip6, network order */", "4I"),
    ("__u32 remote_ip[4];", "4I"),
    ("__u32 nsteps;        /* steps executed */", "I"),
    ("__u32 pad;", "I"),
    (f"__s64 rc[{MAX_STEPS}];       /* helper return per step */", f"{MAX_STEPS}q"),
    (f"__u32 win[{MAX_STEPS}];      /* data_end - data after each step */", f"{MAX_STEPS}I"),
    (f"__u8 head[{RUN_HEAD}];       /* the window's first bytes on entry */", f"{RUN_HEAD}s"),
)
RECORD = struct.Struct("<" + "".join(fmt for _, fmt in FIELDS))
assert RECORD.size % 8 == 0  # array elements are rounded up to 8 bytes; keep the Python offsets exact

_SPEC = {
    ApplyBytes: "§6.1",
    CorkBytes: "§6.2",
    Redirect: "§6.3",
    PullData: "§6.4",
    PushData: "§6.5",
    PopData: "§6.6",
    Write: "§6.0",
}


def _hex(value: int) -> str:
    """A u64 literal, unsigned so C never sees a negative or narrowed constant."""
    return f"{value:#x}ULL" if value > 9 else f"{value}"


# --------------------------------------------------------------------------------------
# The program body (shared by both flavours)


def _step_code(step: Step, index: int, map_type: str) -> list[str]:
    """The C for one step: a comment naming it, the call, and the record of rc and window."""
    spec = _SPEC[type(step)]
    lines: list[str]
    if isinstance(step, ApplyBytes):
        lines = [f"/* step {index}: bpf_msg_apply_bytes(msg, {step.bytes}) (spec {spec}) */",
                 f"rc = msg_apply_bytes(msg, {_hex(step.bytes)});"]
    elif isinstance(step, CorkBytes):
        lines = [f"/* step {index}: bpf_msg_cork_bytes(msg, {step.bytes}) (spec {spec}) */",
                 f"rc = msg_cork_bytes(msg, {_hex(step.bytes)});"]
    elif isinstance(step, PullData):
        lines = [f"/* step {index}: bpf_msg_pull_data(msg, {step.start}, {step.end}, {step.flags}) (spec {spec}) */",
                 f"rc = msg_pull_data(msg, {_hex(step.start)}, {_hex(step.end)}, {_hex(step.flags)});"]
    elif isinstance(step, PushData):
        lines = [f"/* step {index}: bpf_msg_push_data(msg, {step.start}, {step.len}, {step.flags}) (spec {spec}) */",
                 f"rc = msg_push_data(msg, {_hex(step.start)}, {_hex(step.len)}, {_hex(step.flags)});"]
    elif isinstance(step, PopData):
        lines = [f"/* step {index}: bpf_msg_pop_data(msg, {step.start}, {step.len}, {step.flags}) (spec {spec}) */",
                 f"rc = msg_pop_data(msg, {_hex(step.start)}, {_hex(step.len)}, {_hex(step.flags)});"]
    elif isinstance(step, Redirect):
        ingress = " | BPF_F_INGRESS" if step.flags & 1 else ""
        what = f"key {step.key}, flags {step.flags:#x}{' (ingress)' if ingress else ''}"
        if map_type == "sockhash":
            lines = [f"/* step {index}: bpf_msg_redirect_hash(msg, &sock_map, &key, flags), {what} (spec {spec}) */",
                     "{",
                     f"\t__u32 key = {step.key}U;",
                     f"\trc = msg_redirect_hash(msg, SOCK_MAP, &key, {_hex(step.flags)});",
                     "}"]
        else:
            lines = [f"/* step {index}: bpf_msg_redirect_map(msg, &sock_map, key, flags), {what} (spec {spec}) */",
                     f"rc = msg_redirect_map(msg, SOCK_MAP, {step.key}U, {_hex(step.flags)});"]
    else:
        lines = _write_code(step, index, spec)
    lines.append(f"record_step(rec, msg, {index}, rc);")
    return lines


def _write_code(step: Write, index: int, spec: str) -> list[str]:
    n = len(step.data)
    shown = step.data.hex()
    head = f"/* step {index}: write {n} byte{'s' if n != 1 else ''} {shown} at data + {step.offset} (spec {spec}) */"
    if step.offset > WRITE_MAX_OFFSET:
        # docs/execution.md: one rule for every backend and the model.  The verifier bounds
        # direct packet access at data + MAX_PACKET_OFF; a program taking the offset at run
        # time (the interpreter) can store at most 16 bytes from data + 0xffef.
        return [head, "/* offset past 0xffef: beyond the packet range a verified program may store to */",
                "rc = -1;"]
    lines = [head,
             "{",
             "\t__u8 *data = (void *)(long)msg->data;",
             "\t__u8 *data_end = (void *)(long)msg->data_end;",
             "",
             f"\tif (data + {step.offset} + {n} <= data_end) {{"]
    lines += [f"\t\tdata[{step.offset + i}] = {b:#04x};" for i, b in enumerate(step.data)]
    lines += ["\t\trc = 0;",
              "\t} else {",
              "\t\trc = -1; /* not inside [data, data_end): nothing written */",
              "\t}",
              "}"]
    return lines


def _verdict_code(verdict: int | str) -> str:
    if verdict == LAST_RC:
        return "return (__u32)rc; /* the last step's return value (0 when there are none) */"
    if verdict == SK_PASS:
        return "return SK_PASS;"
    if verdict == SK_DROP:
        return "return SK_DROP;"
    assert isinstance(verdict, int)
    return f"return {verdict:#x}; /* neither SK_PASS nor SK_DROP: the kernel treats it as DROP (spec §6.8) */"


def _invocation_code(inv: Invocation, index: int, last: bool, map_type: str) -> list[str]:
    runs = f"runs {index} and later" if last else f"run {index}"
    lines = [f"/* program[{index}]: {runs} */",
             f"static __always_inline __u32 invocation_{index}(struct sk_msg_md *msg, struct run_record *rec)",
             "{",
             "\tlong rc = 0;",
             ""]
    for i, step in enumerate(inv.steps):
        lines += ["\t" + line if line else "" for line in _step_code(step, i, map_type)]
        lines.append("")
    lines.append("\t" + _verdict_code(inv.verdict))
    lines.append("}")
    return lines


def _dispatch_code(count: int) -> list[str]:
    """run i executes program[min(i, last)]: a switch with `default` for the last list."""
    if count == 1:
        return ["\tverdict = invocation_0(msg, rec);"]
    lines = ["\tswitch (run) {"]
    for i in range(count - 1):
        lines.append(f"\tcase {i}: verdict = invocation_{i}(msg, rec); break;")
    lines.append(f"\tdefault: verdict = invocation_{count - 1}(msg, rec); break;")
    lines.append("\t}")
    return lines


_COMMON = """\
#define SK_DROP 0
#define SK_PASS 1
#define AF_INET 2
#define MAX_STEPS {max_steps}
#define MAX_RUN_RECORDS {max_runs}
#define RUN_HEAD {run_head}
#define SCRATCH_SLOT (MAX_RUN_RECORDS + 1) /* where runs past the first MAX_RUN_RECORDS write */
#define RECORD_SLOTS (MAX_RUN_RECORDS + 2)

/* One per run; slot 0 holds only the run counter.  Read back from user space through mmap. */
struct run_record {{
{fields}
}};
"""

_HELPERS = """\
/*
 * The helpers, declared with 64-bit arguments: the case gives raw u64 register values and the
 * kernel cuts start/end/len/bytes to u32 itself (spec §0.3); a u32 parameter here would cut
 * them in the program instead.  flags stays u64.
 */
static long (*msg_apply_bytes)(struct sk_msg_md *msg, __u64 bytes) = (void *)BPF_FUNC_msg_apply_bytes;
static long (*msg_cork_bytes)(struct sk_msg_md *msg, __u64 bytes) = (void *)BPF_FUNC_msg_cork_bytes;
static long (*msg_pull_data)(struct sk_msg_md *msg, __u64 start, __u64 end, __u64 flags) =
\t(void *)BPF_FUNC_msg_pull_data;
static long (*msg_push_data)(struct sk_msg_md *msg, __u64 start, __u64 len, __u64 flags) =
\t(void *)BPF_FUNC_msg_push_data;
static long (*msg_pop_data)(struct sk_msg_md *msg, __u64 start, __u64 len, __u64 flags) =
\t(void *)BPF_FUNC_msg_pop_data;
static long (*msg_redirect_map)(struct sk_msg_md *msg, void *map, __u32 key, __u64 flags) =
\t(void *)BPF_FUNC_msg_redirect_map;
static long (*msg_redirect_hash)(struct sk_msg_md *msg, void *map, void *key, __u64 flags) =
\t(void *)BPF_FUNC_msg_redirect_hash;
static void *(*map_lookup)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static __u64 (*current_pid_tgid)(void) = (void *)BPF_FUNC_get_current_pid_tgid;

/* rc and data_end - data after a step (push, pop and pull move the window: reload both). */
static __always_inline void record_step(struct run_record *rec, struct sk_msg_md *msg, __u32 i, long rc)
{
\trec->rc[i] = rc;
\trec->win[i] = msg->data_end - msg->data;
\trec->nsteps = i + 1;
}
"""

_MAIN = """\
{section}int {name}(struct sk_msg_md *msg)
{{
\t__u32 slot = 0;
\tstruct run_record *head, *rec;
\t__u64 run;
\t__u32 verdict;

\t/* This run's index, over the whole case and every socket. */
\thead = map_lookup(RECORDS, &slot);
\tif (!head)
\t\treturn SK_DROP; /* cannot happen: slot 0 of an array always exists */
\trun = __sync_fetch_and_add(&head->runs, 1);
\tslot = run < MAX_RUN_RECORDS ? run + 1 : SCRATCH_SLOT;
\trec = map_lookup(RECORDS, &slot);
\tif (!rec)
\t\treturn SK_DROP;

\t/* What the program sees on entry: the message and the struct sk_msg_md context. */
\trec->size_in = msg->size;
\trec->win_in = msg->data_end - msg->data;
\t/* The bytes the program can read directly, as far as RUN_HEAD (diffuzz/engine/invariants.py). */
#pragma unroll
\tfor (int i = 0; i < RUN_HEAD; i++) {{
\t\t__u8 *p = (__u8 *)(long)msg->data + i;

\t\tif ((void *)(p + 1) > (void *)(long)msg->data_end)
\t\t\tbreak;
\t\trec->head[i] = *p;
\t}}
\trec->family = msg->family;
\trec->local_port = msg->local_port;
\trec->remote_port = msg->remote_port;
\trec->tid = (__u32)current_pid_tgid();
\tif (msg->family == AF_INET) {{
\t\trec->local_ip[0] = msg->local_ip4;
\t\trec->remote_ip[0] = msg->remote_ip4;
\t}} else {{
\t\trec->local_ip[0] = msg->local_ip6[0];
\t\trec->local_ip[1] = msg->local_ip6[1];
\t\trec->local_ip[2] = msg->local_ip6[2];
\t\trec->local_ip[3] = msg->local_ip6[3];
\t\trec->remote_ip[0] = msg->remote_ip6[0];
\t\trec->remote_ip[1] = msg->remote_ip6[1];
\t\trec->remote_ip[2] = msg->remote_ip6[2];
\t\trec->remote_ip[3] = msg->remote_ip6[3];
\t}}
\trec->nsteps = 0;

{dispatch}

\trec->size_out = msg->size;
\trec->verdict = verdict;
\treturn verdict;
}}
"""


def _header(case: Case, flavour: str, name: str, map_size: str) -> str:
    shown = f' "{name}"' if name else ""
    lists = f"{len(case.program)} step list{'s' if len(case.program) != 1 else ''}"
    return (f"/*\n * diffuzz case{shown}: its SK_MSG verdict program as C ({flavour}).\n"
            f" * Generated by kernel_runner/c_codegen.py from the case's {lists};\n"
            " * run i runs program[min(i, last)] (docs/execution.md \"Program runs\").\n"
            f" * Map: a {case.map.type}{map_size} (u32 key, u32 socket fd).\n */\n")


def _body(case: Case, maps: str, section: str) -> str:
    common = _COMMON.format(max_steps=MAX_STEPS, max_runs=MAX_RUN_RECORDS, run_head=RUN_HEAD,
                            fields="\n".join("\t" + decl for decl, _ in FIELDS))
    parts = [common, maps, _HELPERS]
    last = len(case.program) - 1
    for i, inv in enumerate(case.program):
        parts.append("\n".join(_invocation_code(inv, i, i == last, case.map.type)) + "\n")
    parts.append(_MAIN.format(section=section, name=PROG_NAME, dispatch="\n".join(_dispatch_code(len(case.program)))))
    return "\n".join(parts)


# --------------------------------------------------------------------------------------
# The two flavours


def bcc_source(case: Case) -> str:
    """The program for bcc.  It depends only on the step lists and the map type (which
    redirect helper): not on the case's name or map size, so cases that share a program
    share the text, and with it one compile."""
    maps = (
        "/* Both maps are created by the runner and named by fd: the placeholders below are replaced\n"
        " * by the real fds in the compiled instructions at each load (kernel_runner/bcc_backend.py). */\n"
        f"#define RECORDS ((void *)bpf_pseudo_fd(1, {RECORDS_FD_PLACEHOLDER:#x}))  "
        "/* array of RECORD_SLOTS run_records, mmapable */\n"
        f"#define SOCK_MAP ((void *)bpf_pseudo_fd(1, {SOCK_MAP_FD_PLACEHOLDER:#x})) /* the case's {case.map.type} */\n"
    )
    return _header(case, "bcc", "", "") + "\n" + _body(case, maps, "")


def libbpf_source(case: Case) -> str:
    """A standalone .bpf.c for a reproducer: maps in SEC(".maps"), built with
    `clang -O2 -g -target bpf -c prog.bpf.c` (plus -I/usr/include/x86_64-linux-gnu on Debian)."""
    map_type = "BPF_MAP_TYPE_SOCKHASH" if case.map.type == "sockhash" else "BPF_MAP_TYPE_SOCKMAP"
    maps = (
        "struct {\n"
        "\t__uint(type, BPF_MAP_TYPE_ARRAY);\n"
        "\t__uint(map_flags, BPF_F_MMAPABLE);\n"
        "\t__uint(max_entries, RECORD_SLOTS);\n"
        "\t__type(key, __u32);\n"
        "\t__type(value, struct run_record);\n"
        "} records SEC(\".maps\");\n\n"
        "/* Attach this program to it as BPF_SK_MSG_VERDICT before inserting sockets. */\n"
        "struct {\n"
        f"\t__uint(type, {map_type});\n"
        f"\t__uint(max_entries, {case.map.size});\n"
        "\t__type(key, __u32);\n"
        "\t__type(value, __u32);\n"
        "} sock_map SEC(\".maps\");\n\n"
        "#define RECORDS (&records)\n#define SOCK_MAP (&sock_map)\n"
    )
    return (_header(case, "libbpf", case.name, f" of {case.map.size} entries")
            + "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n\n"
            + _body(case, maps, 'SEC("sk_msg")\n')
            + '\nchar LICENSE[] SEC("license") = "GPL";\n')


SOURCES: dict[str, Callable[[Case], str]] = {"bcc": bcc_source, "libbpf": libbpf_source}
