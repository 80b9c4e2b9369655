// Function-entry recorder for `generate.sh`, preloaded (LD_PRELOAD) into an `nsm` built with
// `-Z instrument-mcount`: every instrumented function calls `mcount` on entry, and this `mcount`
// marks the caller's address in a byte map over the executable (one byte per 16 bytes of code). At
// exit the map is written to $MCOUNT_DIR/<subcommand>-<pid>.map (`nsmgr-1234.map`), where
// `order.py` turns it into the functions each component ran.
#define _GNU_SOURCE
#include <fcntl.h>
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SPAN (128u << 20) /* the executable's address space covered, from its load address */
static uintptr_t base;
static unsigned char *map;

static int main_object(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    (void)data;
    base = info->dlpi_addr; /* the first object reported is the executable */
    return 1;
}

/* The subcommand (`nsmgr`, `forwarder`, ...): the second word of the command line. */
static void subcommand(char *out, size_t len) {
    char args[512] = {0};
    snprintf(out, len, "x");
    int fd = open("/proc/self/cmdline", O_RDONLY);
    if (fd < 0) return;
    ssize_t n = read(fd, args, sizeof args - 1);
    close(fd);
    size_t first = strlen(args);
    if (n > 0 && (ssize_t)first + 1 < n) snprintf(out, len, "%s", args + first + 1);
}

static void dump(void) {
    const char *dir = getenv("MCOUNT_DIR");
    if (!dir || !map) return;
    char name[128], path[1024];
    subcommand(name, sizeof name);
    snprintf(path, sizeof path, "%s/%s-%d.map", dir, name, (int)getpid());
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return;
    for (size_t off = 0, len = SPAN / 16; off < len;) {
        ssize_t w = write(fd, map + off, len - off);
        if (w <= 0) break;
        off += (size_t)w;
    }
    close(fd);
}

__attribute__((constructor)) static void start(void) {
    dl_iterate_phdr(main_object, 0);
    map = mmap(0, SPAN / 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) map = 0;
    atexit(dump);
}

void mcount(void) {
    uintptr_t off = (uintptr_t)__builtin_return_address(0) - base;
    if (map && off < SPAN) map[off >> 4] = 1;
}
