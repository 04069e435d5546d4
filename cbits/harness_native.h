/* Declarations shared by the C sources compiled into harness._native. */
#ifndef HARNESS_NATIVE_H
#define HARNESS_NATIVE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include "uffd_compat.h"
#include <linux/kernel-page-flags.h>

struct harness_uffd_event {
	uint8_t event;
	uint64_t flags;
	uint64_t address;
	uint32_t ptid;
	int32_t fork_ufd;
	uint64_t from, to, len;
	uint64_t start, end;
};

int harness_uffd_open_syscall(int flags);
int harness_uffd_open_dev(int flags);
int harness_uffd_api(int fd, uint64_t features, uint64_t *features_out,
		     uint64_t *ioctls_out);
int harness_uffd_register(int fd, uint64_t start, uint64_t len, uint64_t mode,
			  uint64_t *ioctls_out);
int harness_uffd_unregister(int fd, uint64_t start, uint64_t len);
int harness_uffd_wake(int fd, uint64_t start, uint64_t len);
int harness_uffd_copy(int fd, uint64_t dst, uint64_t src, uint64_t len,
		      uint64_t mode, int64_t *copied);
int harness_uffd_zeropage(int fd, uint64_t start, uint64_t len, uint64_t mode,
			  int64_t *mapped);
int harness_uffd_writeprotect(int fd, uint64_t start, uint64_t len,
			      uint64_t mode);
int harness_uffd_continue(int fd, uint64_t start, uint64_t len, uint64_t mode,
			  int64_t *mapped);
int harness_uffd_poison(int fd, uint64_t start, uint64_t len, uint64_t mode,
			int64_t *updated);
int harness_uffd_move(int fd, uint64_t dst, uint64_t src, uint64_t len,
		      uint64_t mode, int64_t *moved);
int harness_uffd_read_events(int fd, struct harness_uffd_event *out, int max);
long harness_pagemap_scan(int pagemap_fd, struct pm_scan_arg *arg);

/*
 * A UFFDIO_WRITEPROTECT prepared once and issued by a one-argument call: the
 * cheapest call cffi can generate (no argument tuple, one pointer to
 * convert).  Userfaultfd.writeprotect issues a range it has seen before this
 * way; the benchmark's floor (binding.wp_toggle.cffi_floor) calls it bare.
 * Returns 0 or -errno.
 */
struct harness_wp_request {
	int fd;
	uint64_t start, len, mode;
};
int harness_wp_request_issue(const struct harness_wp_request *req);

/*
 * The batched UFFDIO_WRITEPROTECT: @n ranges, one @mode for all, each
 * range's errno (0: done) in @errs[i]; every range is tried.  Returns how
 * many failed.  Two fields only, so that cffi refuses a longer initializer.
 */
struct harness_wp_range {
	uint64_t start;
	uint64_t len;
};
size_t harness_uffd_writeprotect_many(int fd,
				      const struct harness_wp_range *ranges,
				      size_t n, uint64_t mode, int32_t *errs);
/* Two overlapping non-empty ranges: 1 and their indices, 0 if none, -ENOMEM. */
int harness_wp_ranges_overlap(const struct harness_wp_range *ranges, size_t n,
			      size_t *first, size_t *second);

/* memory.c */
void harness_read_pages(uintptr_t addr, size_t npages, size_t page_size);
void harness_write_pages(uintptr_t addr, size_t npages, size_t page_size,
			 uint8_t value);
int harness_probe_access(uintptr_t addr, int write, uint8_t value);
uint64_t harness_checksum(uintptr_t addr, size_t len);
long harness_write_faults(uintptr_t addr, uint8_t value);

#include "timing.h"

#endif
