/*
 * Cycle counts measured in C, so no Python runs inside a timed section.
 *
 * A timed section is "lfence; rdtsc; lfence" ... "rdtscp; lfence" (Intel's
 * "How to Benchmark Code Execution Times", with lfence in place of cpuid,
 * which traps to the hypervisor in a VM).  The leading lfence keeps earlier
 * work out of the section; the one after rdtsc keeps the measured access
 * from starting before the clock is read; rdtscp waits until every earlier
 * instruction has executed (a store's address translation, and so its
 * accessed/dirty-bit assist, included; its data reaching L1 is not), and the
 * final lfence keeps later work from overlapping the read.  An empty section
 * costs harness_time_empty() cycles, reported with every result.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "uffd_compat.h"
#include "timing.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static inline uint64_t tsc_begin(void)
{
	uint32_t lo, hi;

	__asm__ __volatile__("lfence\n\trdtsc\n\tlfence"
			     : "=a"(lo), "=d"(hi) : : "memory");
	return (uint64_t)hi << 32 | lo;
}

static inline uint64_t tsc_end(void)
{
	uint32_t lo, hi, aux;

	__asm__ __volatile__("rdtscp\n\tlfence"
			     : "=a"(lo), "=d"(hi), "=c"(aux) : : "memory");
	(void)aux;
	return (uint64_t)hi << 32 | lo;
}

int harness_cpuid(uint32_t leaf, uint32_t subleaf,
		  struct harness_cpuid_regs *out)
{
	__cpuid_count(leaf, subleaf, out->eax, out->ebx, out->ecx, out->edx);
	return 0;
}
#else
#error "timing.c needs an x86 time-stamp counter"
#endif

/*
 * Write the output buffer once before timing: a fresh buffer (calloc from
 * new heap pages) would otherwise take page faults between timed sections.
 */
static void prefault(uint64_t *cycles, size_t n)
{
	memset(cycles, 0, n * sizeof(*cycles));
}

uint64_t harness_rdtsc(void)
{
	return tsc_begin();
}

size_t harness_time_empty(uint64_t *cycles, size_t n)
{
	prefault(cycles, n);
	for (size_t i = 0; i < n; i++) {
		uint64_t t0 = tsc_begin();
		uint64_t t1 = tsc_end();
		cycles[i] = t1 - t0;
	}
	return n;
}

/*
 * The smallest non-zero step between two consecutive reads.  A virtualised
 * or scaled TSC can advance in steps of many cycles (26 were seen on one
 * host): a difference smaller than a step cannot be seen.
 */
uint64_t harness_tsc_resolution(size_t tries)
{
	uint64_t best = UINT64_MAX;

	for (size_t i = 0; i < tries; i++) {
		uint64_t a = tsc_begin(), b = tsc_begin();
		if (b > a && b - a < best)
			best = b - a;
	}
	return best == UINT64_MAX ? 0 : best;
}

static uint64_t ns_of(const struct timespec *ts)
{
	return (uint64_t)ts->tv_sec * 1000000000ull + (uint64_t)ts->tv_nsec;
}

/* One (tsc, ns) pair: the tightest of a few brackets tsc|clock|tsc. */
static void tsc_clock_pair(uint64_t *tsc, uint64_t *ns)
{
	uint64_t best = UINT64_MAX;

	for (int i = 0; i < 16; i++) {
		struct timespec ts;
		uint64_t a = tsc_begin();
		clock_gettime(CLOCK_MONOTONIC, &ts);
		uint64_t b = tsc_end();
		if (b - a < best) {
			best = b - a;
			*tsc = a + (b - a) / 2;
			*ns = ns_of(&ts);
		}
	}
}

/* TSC ticks per second of CLOCK_MONOTONIC, over a busy-waited window. */
int harness_tsc_hz(uint64_t window_ns, double *hz_out)
{
	uint64_t tsc0, ns0, tsc1, ns1;
	struct timespec now;

	tsc_clock_pair(&tsc0, &ns0);
	do {
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while (ns_of(&now) - ns0 < window_ns);
	tsc_clock_pair(&tsc1, &ns1);
	if (ns1 <= ns0 || tsc1 <= tsc0)
		return -EINVAL;
	*hz_out = (double)(tsc1 - tsc0) * 1e9 / (double)(ns1 - ns0);
	return 0;
}

/*
 * Touch page order[i] (or page i when @order is NULL) and record its cycles
 * in cycles[i].  A shuffled order keeps the hardware from walking ahead of
 * a constant 4 KiB stride, which hides part of a TLB miss.
 */
size_t harness_time_touch(uintptr_t addr, size_t npages, size_t page_size,
			  int write, const uint32_t *order, uint64_t *cycles)
{
	prefault(cycles, npages);
	for (size_t i = 0; i < npages; i++) {
		size_t page = order ? order[i] : i;
		volatile uint8_t *p = (volatile uint8_t *)(addr + page * page_size);
		uint64_t t0, t1;

		if (write) {
			t0 = tsc_begin();
			*p = (uint8_t)page;
			t1 = tsc_end();
		} else {
			t0 = tsc_begin();
			(void)*p;
			t1 = tsc_end();
		}
		cycles[i] = t1 - t0;
	}
	return npages;
}

static int writeprotect(int uffd, uintptr_t addr, size_t len, uint64_t mode)
{
	struct uffdio_writeprotect wp = {
		.range = { .start = addr, .len = len }, .mode = mode };
	return ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) < 0 ? -errno : 0;
}

/*
 * Load one byte of each page of [buf, buf+len): a caller's working set,
 * which it must find again in the TLB after every ioctl.
 */
static void touch_working_set(uintptr_t buf, size_t len)
{
	uint64_t sum = 0;

	for (size_t off = 0; off < len; off += 4096)
		sum += *(volatile uint8_t *)(buf + off);
	__asm__ __volatile__("" : : "r"(sum));
}

/*
 * Protect + un-protect per iteration.  With @ws_len, the caller's working
 * set [ws_buf, ws_buf+ws_len) is touched after each of the two ioctls,
 * inside the timed section, as an interpreter between calls would: a PTE
 * change flushes (INVLPG also drops the paging-structure caches), and the
 * refills are part of what a caller with a working set pays.
 * harness_time_working_set() times the touches alone, to subtract.
 */
int harness_time_wp_toggle(int uffd, uintptr_t addr, size_t len,
			   size_t iters, uintptr_t ws_buf, size_t ws_len,
			   uint64_t *cycles)
{
	prefault(cycles, iters);
	for (size_t i = 0; i < iters; i++) {
		uint64_t t0 = tsc_begin();
		int r = writeprotect(uffd, addr, len, UFFDIO_WRITEPROTECT_MODE_WP);
		touch_working_set(ws_buf, ws_len);
		if (!r)
			r = writeprotect(uffd, addr, len, 0);
		touch_working_set(ws_buf, ws_len);
		uint64_t t1 = tsc_end();
		if (r)
			return r;
		cycles[i] = t1 - t0;
	}
	return 0;
}

/* The working-set touches of harness_time_wp_toggle() alone, per iteration. */
size_t harness_time_working_set(uintptr_t ws_buf, size_t ws_len, size_t iters,
				uint64_t *cycles)
{
	prefault(cycles, iters);
	for (size_t i = 0; i < iters; i++) {
		uint64_t t0 = tsc_begin();
		touch_working_set(ws_buf, ws_len);
		touch_working_set(ws_buf, ws_len);
		cycles[i] = tsc_end() - t0;
	}
	return iters;
}

/* The same UFFDIO_WRITEPROTECT again and again: no PTE changes, the bare ioctl. */
int harness_time_wp_repeat(int uffd, uintptr_t addr, size_t len, uint64_t mode,
			   size_t iters, uint64_t *cycles)
{
	prefault(cycles, iters);
	for (size_t i = 0; i < iters; i++) {
		uint64_t t0 = tsc_begin();
		int r = writeprotect(uffd, addr, len, mode);
		uint64_t t1 = tsc_end();
		if (r)
			return r;
		cycles[i] = t1 - t0;
	}
	return 0;
}

/*
 * A second thread of this mm, reading the page on @cpu until told to stop:
 * while it runs there, every PTE change must shoot down that CPU's TLB.
 */
struct spinner {
	uintptr_t addr;
	int cpu;
	volatile int ready;
	volatile int stop;
	int error;
};

static void *spin(void *arg)
{
	struct spinner *s = arg;

	if (s->cpu >= 0) {
		cpu_set_t set;

		CPU_ZERO(&set);
		CPU_SET(s->cpu, &set);
		s->error = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
	}
	s->ready = 1;
	while (!s->stop) {
		(void)*(volatile uint8_t *)s->addr;
		__builtin_ia32_pause();
	}
	return NULL;
}

/*
 * The RFC cover letter's loop.  @spinner_cpu < 0: one thread; else a
 * second thread spins on that CPU for the whole loop (the two-thread case).
 */
int harness_time_rfc_loop(uintptr_t addr, size_t len, size_t iters,
			  int spinner_cpu, uint64_t *cycles)
{
	void *p = (void *)addr;
	struct spinner s = { .addr = addr, .cpu = spinner_cpu };
	pthread_t thread;
	int err = 0;

	prefault(cycles, iters);
	if (spinner_cpu >= 0) {
		int r = pthread_create(&thread, NULL, spin, &s);
		if (r)
			return -r;
		while (!s.ready)
			__builtin_ia32_pause();
		if (s.error) {
			s.stop = 1;
			pthread_join(thread, NULL);
			return -s.error;
		}
	}
	for (size_t i = 0; i < iters; i++) {
		uint64_t t0 = tsc_begin();
		int r = mprotect(p, len, PROT_READ);
		if (!r)
			r = mprotect(p, len, PROT_READ | PROT_WRITE);
		if (!r)
			*(volatile uint8_t *)p = (uint8_t)i;
		uint64_t t1 = tsc_end();
		if (r) {
			err = -errno;
			break;
		}
		cycles[i] = t1 - t0;
	}
	if (spinner_cpu >= 0) {
		s.stop = 1;
		pthread_join(thread, NULL);
	}
	return err;
}

struct roundtrip {
	int uffd;
	int stop_fd;
	uintptr_t src;
	size_t page_size;
	int error;	/* first -errno the handler met, 0 if none */
};

static void roundtrip_fail(struct roundtrip *rt, int err)
{
	if (!rt->error)
		rt->error = err;
}

/* The fault handler: read one uffd_msg, UFFDIO_COPY the page, repeat. */
static void *roundtrip_handler(void *arg)
{
	struct roundtrip *rt = arg;
	struct pollfd pfd[2] = {
		{ .fd = rt->uffd, .events = POLLIN },
		{ .fd = rt->stop_fd, .events = POLLIN },
	};

	for (;;) {
		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			roundtrip_fail(rt, -errno);
			return NULL;
		}
		if (pfd[1].revents)
			return NULL;
		if (pfd[0].revents & (POLLERR | POLLHUP | POLLNVAL)) {
			roundtrip_fail(rt, -EBADF);
			return NULL;
		}
		if (!(pfd[0].revents & POLLIN))
			continue;

		struct uffd_msg msg;
		ssize_t n = read(rt->uffd, &msg, sizeof(msg));
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			roundtrip_fail(rt, -errno);
			return NULL;
		}
		if (n != sizeof(msg) || msg.event != UFFD_EVENT_PAGEFAULT)
			continue;

		uint64_t dst = msg.arg.pagefault.address & ~(uint64_t)(rt->page_size - 1);
		struct uffdio_copy copy = {
			.dst = dst, .src = rt->src, .len = rt->page_size };
		if (ioctl(rt->uffd, UFFDIO_COPY, &copy) < 0) {
			int err = errno;
			/* Never leave the toucher blocked: map a zero page, or wake it. */
			struct uffdio_range range = { .start = dst, .len = rt->page_size };
			struct uffdio_zeropage zp = { .range = range };
			if (err != EEXIST) {
				roundtrip_fail(rt, -err);
				if (ioctl(rt->uffd, UFFDIO_ZEROPAGE, &zp) == 0)
					continue;
			}
			ioctl(rt->uffd, UFFDIO_WAKE, &range);
		}
	}
}

int harness_time_missing_roundtrip(int uffd, uintptr_t addr, size_t npages,
				   size_t page_size, uintptr_t src, int store,
				   uint64_t *cycles)
{
	int pipefd[2];
	pthread_t thread;
	struct roundtrip rt = { .uffd = uffd, .src = src, .page_size = page_size };

	if (pipe2(pipefd, O_CLOEXEC) < 0)
		return -errno;
	rt.stop_fd = pipefd[0];
	int r = pthread_create(&thread, NULL, roundtrip_handler, &rt);
	if (r) {
		close(pipefd[0]);
		close(pipefd[1]);
		return -r;
	}
	harness_time_touch(addr, npages, page_size, store, NULL, cycles);
	if (write(pipefd[1], "x", 1) < 0)
		roundtrip_fail(&rt, -errno);
	pthread_join(thread, NULL);
	close(pipefd[0]);
	close(pipefd[1]);
	return rt.error ? rt.error : (int)npages;
}
