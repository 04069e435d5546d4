/*
 * timing.c: cycle counts of first touches, write-protect toggles, the RFC's
 * mprotect loop and missing-fault round trips, measured entirely in C.
 *
 * Every timed section is bracketed the same way (see harness_tsc_begin()
 * and harness_tsc_end() in timing.c), so an empty section
 * (harness_time_empty) is the fixed cost to subtract.
 */
#ifndef HARNESS_TIMING_H
#define HARNESS_TIMING_H

#include <stddef.h>
#include <stdint.h>

struct harness_cpuid_regs {
	uint32_t eax, ebx, ecx, edx;
};

/* CPUID leaf/subleaf; returns 0, or -1 when not built for x86. */
int harness_cpuid(uint32_t leaf, uint32_t subleaf,
		  struct harness_cpuid_regs *out);
uint64_t harness_rdtsc(void);

/* Calibration. */
size_t harness_time_empty(uint64_t *cycles, size_t n);
uint64_t harness_tsc_resolution(size_t tries);
int harness_tsc_hz(uint64_t window_ns, double *hz_out);

/* One timed load (write=0) or store (write=1) per page, in @order (NULL: 0..n-1). */
size_t harness_time_touch(uintptr_t addr, size_t npages, size_t page_size,
			  int write, const uint32_t *order, uint64_t *cycles);

/* UFFDIO_WRITEPROTECT protect + un-protect of one range, per iteration,
 * optionally touching a working set (one byte per page) after each ioctl. */
int harness_time_wp_toggle(int uffd, uintptr_t addr, size_t len,
			   size_t iters, uintptr_t ws_buf, size_t ws_len,
			   uint64_t *cycles);
size_t harness_time_working_set(uintptr_t ws_buf, size_t ws_len, size_t iters,
				uint64_t *cycles);
/* The same UFFDIO_WRITEPROTECT @mode repeated (a no-op after the first). */
int harness_time_wp_repeat(int uffd, uintptr_t addr, size_t len, uint64_t mode,
			   size_t iters, uint64_t *cycles);

/*
 * The RFC cover letter's loop: mprotect(READ), mprotect(READ|WRITE), store.
 * @spinner_cpu >= 0: a second thread reads the page on that CPU meanwhile.
 */
int harness_time_rfc_loop(uintptr_t addr, size_t len, size_t iters,
			  int spinner_cpu, uint64_t *cycles);

/*
 * Touch each page of a MISSING-registered range; a C thread serves each
 * fault with UFFDIO_COPY from @src.  Returns pages timed or -errno.
 */
int harness_time_missing_roundtrip(int uffd, uintptr_t addr, size_t npages,
				   size_t page_size, uintptr_t src, int write,
				   uint64_t *cycles);

#endif
