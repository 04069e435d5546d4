/*
 * Thin wrappers around userfaultfd(2) and the UFFDIO_* ioctls.
 *
 * Each returns 0 (or a count) on success and -errno on failure, so the
 * Python layer never has to read errno after the fact, and each fills the
 * structure the kernel writes back into plain out-parameters.  Keeping the
 * ioctl here rather than in Python's fcntl.ioctl() is what keeps a
 * single-page UFFDIO_WRITEPROTECT close to the cost of a C loop.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "harness_native.h"

#define RET(expr) ((expr) < 0 ? -errno : 0)

int harness_uffd_open_syscall(int flags)
{
	long fd = syscall(__NR_userfaultfd, flags);
	return fd < 0 ? -errno : (int)fd;
}

int harness_uffd_open_dev(int flags)
{
	int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev < 0)
		return -errno;
	int fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
	int err = errno;
	close(dev);
	return fd < 0 ? -err : fd;
}

int harness_uffd_api(int fd, uint64_t features, uint64_t *features_out,
		     uint64_t *ioctls_out)
{
	struct uffdio_api api = { .api = UFFD_API, .features = features };
	int r = RET(ioctl(fd, UFFDIO_API, &api));
	*features_out = api.features;
	*ioctls_out = api.ioctls;
	return r;
}

int harness_uffd_register(int fd, uint64_t start, uint64_t len, uint64_t mode,
			  uint64_t *ioctls_out)
{
	struct uffdio_register reg = {
		.range = { .start = start, .len = len }, .mode = mode };
	int r = RET(ioctl(fd, UFFDIO_REGISTER, &reg));
	*ioctls_out = reg.ioctls;
	return r;
}

int harness_uffd_unregister(int fd, uint64_t start, uint64_t len)
{
	struct uffdio_range range = { .start = start, .len = len };
	return RET(ioctl(fd, UFFDIO_UNREGISTER, &range));
}

int harness_uffd_wake(int fd, uint64_t start, uint64_t len)
{
	struct uffdio_range range = { .start = start, .len = len };
	return RET(ioctl(fd, UFFDIO_WAKE, &range));
}

int harness_uffd_copy(int fd, uint64_t dst, uint64_t src, uint64_t len,
		      uint64_t mode, int64_t *copied)
{
	struct uffdio_copy copy = {
		.dst = dst, .src = src, .len = len, .mode = mode };
	int r = RET(ioctl(fd, UFFDIO_COPY, &copy));
	*copied = copy.copy;
	return r;
}

int harness_uffd_zeropage(int fd, uint64_t start, uint64_t len, uint64_t mode,
			  int64_t *mapped)
{
	struct uffdio_zeropage zp = {
		.range = { .start = start, .len = len }, .mode = mode };
	int r = RET(ioctl(fd, UFFDIO_ZEROPAGE, &zp));
	*mapped = zp.zeropage;
	return r;
}

int harness_uffd_writeprotect(int fd, uint64_t start, uint64_t len,
			      uint64_t mode)
{
	struct uffdio_writeprotect wp = {
		.range = { .start = start, .len = len }, .mode = mode };
	return RET(ioctl(fd, UFFDIO_WRITEPROTECT, &wp));
}

int harness_wp_request_issue(const struct harness_wp_request *req)
{
	return harness_uffd_writeprotect(req->fd, req->start, req->len,
					 req->mode);
}

struct span {
	uint64_t start, end;
	size_t index;
};

static int span_cmp(const void *a, const void *b)
{
	const struct span *x = a, *y = b;

	return x->start < y->start ? -1 : x->start > y->start;
}

/*
 * Find two non-empty ranges that overlap: 1 with their indices in *@first
 * and *@second (in the caller's order), 0 if none, -ENOMEM.  Sorts a copy
 * by start and sweeps with the furthest end seen so far, so a long range
 * that covers several later ones is caught whatever lies between.  An end
 * past 2^64 counts as 2^64 - 1 (the kernel rejects such a range anyway).
 */
int harness_wp_ranges_overlap(const struct harness_wp_range *ranges, size_t n,
			      size_t *first, size_t *second)
{
	struct span *spans = malloc((n ? n : 1) * sizeof(*spans));
	size_t m = 0;
	int found = 0;

	if (!spans)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		uint64_t start = ranges[i].start, len = ranges[i].len;

		if (!len)
			continue;
		spans[m].start = start;
		spans[m].end = len > UINT64_MAX - start ? UINT64_MAX : start + len;
		spans[m].index = i;
		m++;
	}
	qsort(spans, m, sizeof(*spans), span_cmp);
	for (size_t i = 1, reach = 0; i < m; i++) {
		if (spans[reach].end > spans[i].start) {
			size_t a = spans[reach].index, b = spans[i].index;

			*first = a < b ? a : b;
			*second = a < b ? b : a;
			found = 1;
			break;
		}
		if (spans[i].end > spans[reach].end)
			reach = i;
	}
	free(spans);
	return found;
}

/*
 * The batched path: one call from Python for @n ranges, the loop here.
 * Ranges are independent (userfaultfd_writeprotect() takes and drops the
 * mmap lock per ioctl), so a failed range does not stop the others: each
 * gets its own errno and the caller sees which were done.
 */
size_t harness_uffd_writeprotect_many(int fd,
				      const struct harness_wp_range *ranges,
				      size_t n, uint64_t mode, int32_t *errs)
{
	size_t failed = 0;

	for (size_t i = 0; i < n; i++) {
		errs[i] = -harness_uffd_writeprotect(fd, ranges[i].start,
						     ranges[i].len, mode);
		failed += errs[i] != 0;
	}
	return failed;
}

int harness_uffd_continue(int fd, uint64_t start, uint64_t len, uint64_t mode,
			  int64_t *mapped)
{
	struct uffdio_continue cont = {
		.range = { .start = start, .len = len }, .mode = mode };
	int r = RET(ioctl(fd, UFFDIO_CONTINUE, &cont));
	*mapped = cont.mapped;
	return r;
}

int harness_uffd_poison(int fd, uint64_t start, uint64_t len, uint64_t mode,
			int64_t *updated)
{
	struct uffdio_poison poison = {
		.range = { .start = start, .len = len }, .mode = mode };
	int r = RET(ioctl(fd, UFFDIO_POISON, &poison));
	*updated = poison.updated;
	return r;
}

int harness_uffd_move(int fd, uint64_t dst, uint64_t src, uint64_t len,
		      uint64_t mode, int64_t *moved)
{
	struct uffdio_move move = {
		.dst = dst, .src = src, .len = len, .mode = mode };
	int r = RET(ioctl(fd, UFFDIO_MOVE, &move));
	*moved = move.move;
	return r;
}

/*
 * Read up to @max messages in one read(2) and flatten the unions of
 * struct uffd_msg, so Python sees one plain record per event.
 */
int harness_uffd_read_events(int fd, struct harness_uffd_event *out, int max)
{
	struct uffd_msg msgs[64];

	if (max > 64)
		max = 64;
	ssize_t n = read(fd, msgs, sizeof(msgs[0]) * (size_t)max);
	if (n < 0)
		return -errno;
	int count = (int)(n / (ssize_t)sizeof(msgs[0]));
	for (int i = 0; i < count; i++) {
		struct uffd_msg *m = &msgs[i];
		struct harness_uffd_event *e = &out[i];

		memset(e, 0, sizeof(*e));
		e->event = m->event;
		e->fork_ufd = -1;
		switch (m->event) {
		case UFFD_EVENT_PAGEFAULT:
			e->flags = m->arg.pagefault.flags;
			e->address = m->arg.pagefault.address;
			e->ptid = m->arg.pagefault.feat.ptid;
			break;
		case UFFD_EVENT_FORK:
			e->fork_ufd = (int32_t)m->arg.fork.ufd;
			break;
		case UFFD_EVENT_REMAP:
			e->from = m->arg.remap.from;
			e->to = m->arg.remap.to;
			e->len = m->arg.remap.len;
			break;
		case UFFD_EVENT_REMOVE:
		case UFFD_EVENT_UNMAP:
			e->start = m->arg.remove.start;
			e->end = m->arg.remove.end;
			break;
		}
	}
	return count;
}

long harness_pagemap_scan(int pagemap_fd, struct pm_scan_arg *arg)
{
	arg->size = sizeof(*arg);
	long r = ioctl(pagemap_fd, PAGEMAP_SCAN, arg);
	return r < 0 ? -errno : r;
}
