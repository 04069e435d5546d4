/*
 * Page-wise accesses done in C, so that a touch is one load or store and
 * not whatever a Python slice happens to compile to (which may copy, read
 * before writing, or touch neighbouring pages).
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>

#include "harness_native.h"

void harness_read_pages(uintptr_t addr, size_t npages, size_t page_size)
{
	for (size_t i = 0; i < npages; i++)
		(void)*(volatile uint8_t *)(addr + i * page_size);
}

void harness_write_pages(uintptr_t addr, size_t npages, size_t page_size,
			 uint8_t value)
{
	for (size_t i = 0; i < npages; i++)
		*(volatile uint8_t *)(addr + i * page_size) = value;
}

uint64_t harness_checksum(uintptr_t addr, size_t len)
{
	/* FNV-1a: cheap, and any changed byte changes the sum. */
	uint64_t h = 1469598103934665603ULL;
	const volatile uint8_t *p = (const volatile uint8_t *)addr;
	for (size_t i = 0; i < len; i++)
		h = (h ^ p[i]) * 1099511628211ULL;
	return h;
}

static __thread sigjmp_buf probe_env;
static __thread volatile int probe_armed;

static void probe_handler(int sig)
{
	if (probe_armed)
		siglongjmp(probe_env, sig);
	/* Not ours: fall back to the default action. */
	signal(sig, SIG_DFL);
	raise(sig);
}

/*
 * One access that may raise SIGBUS (UFFD_FEATURE_SIGBUS, UFFDIO_POISON) or
 * SIGSEGV.  Returns 0 when the access completed, or the signal number.
 * The caller's handlers (pytest's faulthandler among them) are restored.
 */
int harness_probe_access(uintptr_t addr, int write, uint8_t value)
{
	struct sigaction sa, old_bus, old_segv;
	int sig;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = probe_handler;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, &old_bus);
	sigaction(SIGSEGV, &sa, &old_segv);

	sig = sigsetjmp(probe_env, 1);
	if (sig == 0) {
		probe_armed = 1;
		if (write)
			*(volatile uint8_t *)addr = value;
		else
			(void)*(volatile uint8_t *)addr;
	}
	probe_armed = 0;
	sigaction(SIGBUS, &old_bus, NULL);
	sigaction(SIGSEGV, &old_segv, NULL);
	return sig;
}

/*
 * One store, and the page faults this thread took for it (minor + major,
 * from getrusage(RUSAGE_THREAD) around the store): 0 means the PTE was
 * present and writable, so the store completed in hardware (the CPU may
 * still set the accessed/dirty bits itself).  A PTE that is not writable
 * (write-protected, COW-shared, clean shared needing writenotify, soft-dirty
 * armed) takes a write fault: do_wp_page() or a uffd-wp fault.  Measured in
 * C so that nothing but the store lies between the two readings.
 * Returns -1 (errno set) when getrusage fails.
 */
long harness_write_faults(uintptr_t addr, uint8_t value)
{
	struct rusage before, after;

	if (getrusage(RUSAGE_THREAD, &before) != 0)
		return -1;
	*(volatile uint8_t *)addr = value;
	if (getrusage(RUSAGE_THREAD, &after) != 0)
		return -1;
	return (after.ru_minflt - before.ru_minflt) +
	       (after.ru_majflt - before.ru_majflt);
}
