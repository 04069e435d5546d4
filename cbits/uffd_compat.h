/*
 * The uapi of userfaultfd and PAGEMAP_SCAN as the harness needs it.
 *
 * Everything comes from the installed <linux/userfaultfd.h> and <linux/fs.h>
 * first.  Values newer than those headers (Debian 12 ships 6.1 headers; the
 * kernels we drive are 6.12+) get a named fallback copied from Linux 6.12's
 * include/uapi, each guarded so a newer header always wins.
 */
#ifndef HARNESS_UFFD_COMPAT_H
#define HARNESS_UFFD_COMPAT_H

#include <linux/types.h>
#include <linux/ioctl.h>
#include <linux/userfaultfd.h>
#include <linux/fs.h>

/* Linux 6.4: UFFD_FEATURE_WP_UNPOPULATED */
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED		(1<<13)
#endif
/* Linux 6.6: UFFDIO_POISON */
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON			(1<<14)
#endif
/* Linux 6.7: UFFD_FEATURE_WP_ASYNC (with PAGEMAP_SCAN) */
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC			(1<<15)
#endif
/* Linux 6.8: UFFDIO_MOVE */
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE			(1<<16)
#endif

#ifndef UFFDIO_CONTINUE_MODE_WP
#define UFFDIO_CONTINUE_MODE_WP			((__u64)1<<1)
#endif

#ifndef UFFDIO_POISON
#define _UFFDIO_POISON				(0x08)
struct uffdio_poison {
	struct uffdio_range range;
#define UFFDIO_POISON_MODE_DONTWAKE		((__u64)1<<0)
	__u64 mode;
	__s64 updated;
};
#define UFFDIO_POISON	_IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
#endif

#ifndef UFFDIO_MOVE
#define _UFFDIO_MOVE				(0x05)
struct uffdio_move {
	__u64 dst;
	__u64 src;
	__u64 len;
#define UFFDIO_MOVE_MODE_DONTWAKE		((__u64)1<<0)
#define UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES	((__u64)1<<1)
	__u64 mode;
	__s64 move;
};
#define UFFDIO_MOVE	_IOWR(UFFDIO, _UFFDIO_MOVE, struct uffdio_move)
#endif

/*
 * The access/write hints of the patch under test (BRIEF 2.1).  No released
 * header has them; these are the defaults of our port.  Other proposals
 * claim the same bits, so the Python layer replaces them with the values of
 * a kernel tree's header when it is told where that tree is.
 */
#ifndef UFFD_FEATURE_ACCESS_HINTS
#define UFFD_FEATURE_ACCESS_HINTS		(1<<17)
#endif
#ifndef UFFDIO_WRITEPROTECT_MODE_ACCESS_LIKELY
#define UFFDIO_WRITEPROTECT_MODE_ACCESS_LIKELY	((__u64)1<<2)
#endif
#ifndef UFFDIO_WRITEPROTECT_MODE_WRITE_LIKELY
#define UFFDIO_WRITEPROTECT_MODE_WRITE_LIKELY	((__u64)1<<3)
#endif

/* Linux 6.7: PAGEMAP_SCAN (fs/proc/task_mmu.c) */
#ifndef PAGEMAP_SCAN
#define PAGE_IS_WPALLOWED	(1 << 0)
#define PAGE_IS_WRITTEN		(1 << 1)
#define PAGE_IS_FILE		(1 << 2)
#define PAGE_IS_PRESENT		(1 << 3)
#define PAGE_IS_SWAPPED		(1 << 4)
#define PAGE_IS_PFNZERO		(1 << 5)
#define PAGE_IS_HUGE		(1 << 6)
#define PAGE_IS_SOFT_DIRTY	(1 << 7)
struct page_region {
	__u64 start;
	__u64 end;
	__u64 categories;
};
#define PM_SCAN_WP_MATCHING	(1 << 0)
#define PM_SCAN_CHECK_WPASYNC	(1 << 1)
struct pm_scan_arg {
	__u64 size;
	__u64 flags;
	__u64 start;
	__u64 end;
	__u64 walk_end;
	__u64 vec;
	__u64 vec_len;
	__u64 max_pages;
	__u64 category_inverted;
	__u64 category_mask;
	__u64 category_anyof_mask;
	__u64 return_mask;
};
#define PAGEMAP_SCAN	_IOWR('f', 16, struct pm_scan_arg)
#endif

#endif /* HARNESS_UFFD_COMPAT_H */
