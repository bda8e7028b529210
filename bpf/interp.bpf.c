// SPDX-License-Identifier: GPL-2.0
/*
 * diffuzz's map-driven SK_MSG interpreter: one verdict program for every case.
 *
 * A case's program is a script (kernel_runner/script.py, whose structs this file mirrors)
 * written into the mmap'able "script" map: one step list per invocation.  Run i executes
 * step list min(i, nprogs - 1) (docs/execution.md "Program runs"), records what it saw into
 * the mmap'able "records" map, and returns the step list's verdict.
 *
 * Every helper gets the script's raw 64-bit values in its argument registers: the kernel's
 * BPF_CALL_x truncates them to its own parameter types, exactly as for any other caller,
 * so "bad values" reach the helper unchanged.  That is why the helpers are declared here
 * with __u64 parameters instead of using bpf_helper_defs.h.
 *
 * Build: clang -O2 -g -target bpf -mcpu=v3 -I/usr/include/x86_64-linux-gnu -c interp.bpf.c
 * (-mcpu=v3 for the fetching atomic add of the run counter).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define MAX_PROGRAMS 32
#define MAX_STEPS 16
#define MAX_WRITE 16
#define MAX_RUN_RECORDS 64
#define RUN_HEAD_LEN 16	/* bytes of the window recorded on entry (Run.head) */
/* The verifier's bound on a variable packet offset (MAX_PACKET_OFF) is 0xffff, and the
 * offset plus the largest constant displacement must stay within it. */
#define WRITE_MAX_OFFSET (0xffff - MAX_WRITE)
#define WRITE_SKIPPED (-1)

/* Hide a value's origin from clang, so it keeps the branch-free arithmetic below. */
#define opaque(v) ({ __u64 __v = (v); asm volatile("" : "+r"(__v)); __v; })

enum op { OP_NONE, OP_APPLY, OP_CORK, OP_PULL, OP_PUSH, OP_POP, OP_WRITE, OP_REDIRECT };
enum verdict_kind { VERDICT_CONST, VERDICT_LAST_RC };
enum map_kind { MAP_KIND_SOCKMAP, MAP_KIND_SOCKHASH };

struct step {
	__u32 op;
	__u32 n;		/* write: number of bytes, 1..MAX_WRITE */
	__u64 a, b, c;		/* raw helper arguments, see script.py */
	__u8 data[MAX_WRITE];
};

struct invocation {
	__u32 nsteps;
	__u32 verdict_kind;
	__u32 verdict;
	__u32 pad;
	struct step steps[MAX_STEPS];
};

struct script {
	__u32 nprogs;
	__u32 map_kind;
	__u32 pad[2];
	struct invocation progs[MAX_PROGRAMS];
};

struct run_rec {
	__u32 size_in, win_in, size_out, verdict;
	__u32 nsteps, family, local_port, remote_port;
	__u32 local_ip4, remote_ip4, tid, pad;
	__u32 local_ip6[4], remote_ip6[4];
	__s64 rc[MAX_STEPS];
	__u32 win[MAX_STEPS];
	__u8 head[RUN_HEAD_LEN];	/* the window's first bytes on entry: what the program reads */
};

struct records {
	__u64 count;
	__u64 pad;
	/* runs[64..127] are scratch: every run after the 64th writes one of them (never read) */
	struct run_rec runs[2 * MAX_RUN_RECORDS];
};

/* The loader overrides max_entries of both socket maps with the case's map size. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} sockmap SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} sockhash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct script);
} script SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct records);
} records SEC(".maps");

/* The sk_msg helpers with 64-bit parameters (see the top of the file). */
static long (*msg_redirect_map)(struct sk_msg_md *msg, void *map, __u64 key, __u64 flags) =
	(void *)BPF_FUNC_msg_redirect_map;
static long (*msg_apply_bytes)(struct sk_msg_md *msg, __u64 bytes) = (void *)BPF_FUNC_msg_apply_bytes;
static long (*msg_cork_bytes)(struct sk_msg_md *msg, __u64 bytes) = (void *)BPF_FUNC_msg_cork_bytes;
static long (*msg_pull_data)(struct sk_msg_md *msg, __u64 start, __u64 end, __u64 flags) =
	(void *)BPF_FUNC_msg_pull_data;
static long (*msg_redirect_hash)(struct sk_msg_md *msg, void *map, void *key, __u64 flags) =
	(void *)BPF_FUNC_msg_redirect_hash;
static long (*msg_push_data)(struct sk_msg_md *msg, __u64 start, __u64 len, __u64 flags) =
	(void *)BPF_FUNC_msg_push_data;
static long (*msg_pop_data)(struct sk_msg_md *msg, __u64 start, __u64 len, __u64 flags) =
	(void *)BPF_FUNC_msg_pop_data;

/* Store n bytes at data + off, all or nothing: 0 written, -1 outside [data, data_end). */
static __always_inline long do_write(struct sk_msg_md *msg, const struct step *st)
{
	__u8 *data = (__u8 *)(long)msg->data;
	__u8 *data_end = (__u8 *)(long)msg->data_end;
	__u64 win = data_end - data;
	__u64 off = st->a;
	__u32 n = st->n;

	if (n == 0 || n > MAX_WRITE || off > win || n > win - off)
		return WRITE_SKIPPED;
	if (off > WRITE_MAX_OFFSET)	/* docs/execution.md: skipped, as out of window */
		return WRITE_SKIPPED;
	data += off;
	/* Byte by byte, each store checked against data_end: always true after the check above,
	 * but the verifier proves packet accesses only from such comparisons.  Spelled out
	 * because clang does not unroll a loop with these exits. */
#define WRITE_BYTE(k)						\
	if ((k) < n) {						\
		if (data + (k) + 1 > data_end)			\
			return WRITE_SKIPPED;			\
		data[k] = st->data[k];				\
	}
	WRITE_BYTE(0) WRITE_BYTE(1) WRITE_BYTE(2) WRITE_BYTE(3)
	WRITE_BYTE(4) WRITE_BYTE(5) WRITE_BYTE(6) WRITE_BYTE(7)
	WRITE_BYTE(8) WRITE_BYTE(9) WRITE_BYTE(10) WRITE_BYTE(11)
	WRITE_BYTE(12) WRITE_BYTE(13) WRITE_BYTE(14) WRITE_BYTE(15)
#undef WRITE_BYTE
	return 0;
}

static __always_inline long do_step(struct sk_msg_md *msg, struct step *st, __u32 map_kind)
{
	switch (st->op) {
	case OP_APPLY:
		return msg_apply_bytes(msg, st->a);
	case OP_CORK:
		return msg_cork_bytes(msg, st->a);
	case OP_PULL:
		return msg_pull_data(msg, st->a, st->b, st->c);
	case OP_PUSH:
		return msg_push_data(msg, st->a, st->b, st->c);
	case OP_POP:
		return msg_pop_data(msg, st->a, st->b, st->c);
	case OP_WRITE:
		return do_write(msg, st);
	case OP_REDIRECT:
		/* The hash key is the low 4 bytes of the little-endian u64 `a`, read in place:
		 * a copy on the stack would make the stack differ between paths and cost pruning. */
		if (map_kind == MAP_KIND_SOCKHASH)
			return msg_redirect_hash(msg, &sockhash, (void *)&st->a, st->b);
		return msg_redirect_map(msg, &sockmap, st->a, st->b);
	}
	return 0;
}

SEC("sk_msg")
int interp(struct sk_msg_md *msg)
{
	__u32 zero = 0;
	struct script *s = bpf_map_lookup_elem(&script, &zero);
	struct records *r = bpf_map_lookup_elem(&records, &zero);
	struct invocation *inv;
	struct run_rec *rec;
	__u64 run, slot, pi, last, over;
	__u32 nsteps, i;
	long rc = 0;

	if (!s || !r)
		return SK_DROP;	/* cannot happen: both are one-entry arrays */

	run = __sync_fetch_and_add(&r->count, 1);
	/* Indexes are computed without branches: a clamp by `if` would split the verification
	 * into a constant-index path and a variable-index path, and the whole step loop would be
	 * verified once for each (8x the cost).  Counts stay far below 2^63. */
	over = opaque((__u64)(MAX_RUN_RECORDS - 1) - run) >> 63;	/* run >= 64 */
	/* `+`, not `|`, and the second term opaque: verifiers before 6.5 (Debian's 6.1) keep no
	 * bounds for an OR (or MUL, shift, XOR) of two variable registers, only for ADD, SUB and
	 * AND; opaque() stops clang from proving the terms disjoint and turning the `+` into `|`. */
	slot = (run & (MAX_RUN_RECORDS - 1)) + opaque(over * MAX_RUN_RECORDS);
	rec = &r->runs[slot];

	last = (s->nprogs - 1) & (MAX_PROGRAMS - 1);	/* nprogs >= 1 (script.py) */
	over = opaque(last - run) >> 63;		/* run > last */
	/* One term is 0: the sum is < MAX_PROGRAMS, which the mask tells a verifier that adds bounds. */
	pi = ((run & (MAX_PROGRAMS - 1) & (over - 1)) + opaque(last & -over)) & (MAX_PROGRAMS - 1);
	inv = &s->progs[pi];
	nsteps = inv->nsteps & (2 * MAX_STEPS - 1);	/* <= MAX_STEPS (script.py); the loop stops there */

	rec->size_in = msg->size;
	rec->win_in = (long)msg->data_end - (long)msg->data;
	/* The bytes the program can read directly, as far as RUN_HEAD_LEN (the invariant that
	 * they were sent or pushed: diffuzz/engine/invariants.py program_view). */
#pragma unroll
	for (i = 0; i < RUN_HEAD_LEN; i++) {
		__u8 *p = (__u8 *)(long)msg->data + i;

		if ((void *)(p + 1) > (void *)(long)msg->data_end)
			break;
		rec->head[i] = *p;
	}

	for (i = 0; i < MAX_STEPS; i++) {
		if (i >= nsteps)
			break;
		rc = do_step(msg, &inv->steps[i], s->map_kind);
		rec->rc[i] = rc;
		/* push/pop/pull may move the window: read data/data_end afresh */
		rec->win[i] = (long)msg->data_end - (long)msg->data;
	}

	rec->nsteps = i;
	rec->size_out = msg->size;
	rec->verdict = inv->verdict_kind == VERDICT_LAST_RC ? (__u32)rc : inv->verdict;
	rec->family = msg->family;
	rec->local_port = msg->local_port;
	rec->remote_port = msg->remote_port;
	rec->local_ip4 = msg->local_ip4;
	rec->remote_ip4 = msg->remote_ip4;
	rec->local_ip6[0] = msg->local_ip6[0];
	rec->local_ip6[1] = msg->local_ip6[1];
	rec->local_ip6[2] = msg->local_ip6[2];
	rec->local_ip6[3] = msg->local_ip6[3];
	rec->remote_ip6[0] = msg->remote_ip6[0];
	rec->remote_ip6[1] = msg->remote_ip6[1];
	rec->remote_ip6[2] = msg->remote_ip6[2];
	rec->remote_ip6[3] = msg->remote_ip6[3];
	rec->tid = (__u32)bpf_get_current_pid_tgid();
	return rec->verdict;
}

char _license[] SEC("license") = "GPL";
