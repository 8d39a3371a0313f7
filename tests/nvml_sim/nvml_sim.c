/*
 * Simulated NVML (libnvidia-ml.so.1) for tests.
 *
 * Implements a subset of the NVML C API, with the exact prototypes of NVIDIA's
 * nvml.h. Devices, values and faults come from the scenario file named by the
 * environment variable NVML_SIM_SCENARIO; the file is re-read whenever it
 * changes. The format is described in README.md next to this file.
 *
 * Extra exported functions (not part of NVML):
 *   unsigned long long nvmlSimCallCount(void)  NVML API calls made so far
 *   void nvmlSimReset(void)                    drop init refcount and event sets
 */
#define _POSIX_C_SOURCE 200809L

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "nvml.h"

#define MAX_GPUS 32
#define MAX_MIG 8
#define MAX_PROCS 1024
#define MAX_XIDS 256
#define MAX_SETS 16
#define MAX_TOKENS 128
#define MAX_FILE (4 << 20)
#define STR_LEN 96
#define STEP_NS 10000000LL   /* sleep granularity of stalls and event waits */
#define RACY_NS 50000000LL   /* a file this fresh is re-read on every call */
#define DEFAULT_MAX_MIG 7
#define UNSET ULLONG_MAX
#define NO_INSTANCE 0xFFFFFFFFu
#define SUPPORTED_EVENTS (nvmlEventTypeSingleBitEccError | nvmlEventTypeDoubleBitEccError | \
                          nvmlEventTypePState | nvmlEventTypeXidCriticalError | nvmlEventTypeClock)

unsigned long long nvmlSimCallCount(void);
void nvmlSimReset(void);

/* ------------------------------------------------------------------ */
/* Categories: what `unsupported` and `stall` lines name.              */

enum {
    CAT_NONE = 0, CAT_NAME, CAT_UUID, CAT_INDEX, CAT_PCI, CAT_MEMORY, CAT_UTIL, CAT_POWER,
    CAT_ENERGY, CAT_TEMP, CAT_CLOCKS, CAT_CLOCKS_EVENT, CAT_ECC, CAT_REMAP, CAT_PCIE,
    CAT_PCIE_LINK, CAT_NVLINK, CAT_MIG, CAT_VIRT, CAT_PROCESSES, CAT_EVENTS, CAT_RETIRED, NCAT
};
#define CAT_ALL (-1)

static const struct { const char *name; int cat; } CATS[] = {
    {"name", CAT_NAME}, {"uuid", CAT_UUID}, {"index", CAT_INDEX}, {"pci", CAT_PCI},
    {"memory", CAT_MEMORY}, {"util", CAT_UTIL}, {"mem_util", CAT_UTIL}, {"power", CAT_POWER},
    {"energy", CAT_ENERGY}, {"temp", CAT_TEMP}, {"clocks", CAT_CLOCKS},
    {"clocks_event", CAT_CLOCKS_EVENT}, {"ecc", CAT_ECC}, {"remap", CAT_REMAP},
    {"pcie", CAT_PCIE}, {"pcie_link", CAT_PCIE_LINK}, {"nvlink", CAT_NVLINK}, {"mig", CAT_MIG},
    {"virt", CAT_VIRT}, {"processes", CAT_PROCESSES}, {"events", CAT_EVENTS},
    {"retired", CAT_RETIRED}, {"all", CAT_ALL},
};

enum { SYS_INIT = 0, SYS_SHUTDOWN, SYS_SYSTEM, SYS_COUNT, SYS_HANDLE, NSYS };
static const char *const SYS_NAMES[NSYS] = {"init", "shutdown", "system", "count", "handle"};

/* ------------------------------------------------------------------ */
/* Scenario state.                                                     */

typedef struct {
    int defined, referenced;
    char name[STR_LEN], uuid[STR_LEN];
    unsigned pci_domain, pci_bus, pci_device;
    unsigned long long mem_total, mem_used, mem_reserved, util, mem_util, power_mw, energy_mj,
        temp, sm_clock, mem_clock, video_clock, clocks_event, ecc_corrected, ecc_uncorrected,
        ecc_corrected_agg, ecc_uncorrected_agg, remapped_corr, remapped_unc, remap_pending,
        remap_failure, pcie_tx_kbps, pcie_rx_kbps, pcie_gen, pcie_width, pcie_max_gen,
        pcie_max_width, nvlink_tx_kib, nvlink_rx_kib, mig, mig_pending, max_mig, virt,
        pci_device_id, pci_subsystem_id, retired_sbe, retired_dbe, retired_pending;
    unsigned unsupported; /* bit per category */
    int lost;
    unsigned stall_ms[NCAT], stall_all_ms;
} sim_gpu_t;

typedef struct {
    int defined, referenced;
    char name[STR_LEN], uuid[STR_LEN];
    unsigned long long gi, ci, mem_total, mem_used, mem_reserved;
} sim_mig_t;

typedef struct {
    int gpu, mig; /* mig < 0: not on a MIG device */
    unsigned pid;
    unsigned long long used;
} sim_proc_t;

typedef struct {
    unsigned gpu;
    unsigned long long code;
} sim_xid_t;

enum { ST_NONE = 0, ST_OK, ST_BAD };

typedef struct {
    int status;
    char error[512];
    char driver[STR_LEN], nvml_version[STR_LEN];
    long long cuda;
    unsigned long long init_error;
    unsigned ngpus;
    sim_gpu_t gpus[MAX_GPUS];
    sim_mig_t migs[MAX_GPUS][MAX_MIG];
    unsigned nprocs;
    sim_proc_t procs[MAX_PROCS];
    unsigned nxids;
    sim_xid_t xids[MAX_XIDS];
    unsigned sys_stall_ms[NSYS];
} sim_state_t;

#define GPU_KEY(k, max) {#k, offsetof(sim_gpu_t, k), max}
static const struct { const char *key; size_t off; unsigned long long max; } GPU_KEYS[] = {
    GPU_KEY(mem_total, ULLONG_MAX), GPU_KEY(mem_used, ULLONG_MAX),
    GPU_KEY(mem_reserved, ULLONG_MAX), GPU_KEY(util, 100), GPU_KEY(mem_util, 100),
    GPU_KEY(power_mw, UINT_MAX), GPU_KEY(energy_mj, ULLONG_MAX - 1), GPU_KEY(temp, UINT_MAX),
    GPU_KEY(sm_clock, UINT_MAX), GPU_KEY(mem_clock, UINT_MAX), GPU_KEY(video_clock, UINT_MAX),
    GPU_KEY(clocks_event, ULLONG_MAX), GPU_KEY(ecc_corrected, ULLONG_MAX - 1),
    GPU_KEY(ecc_uncorrected, ULLONG_MAX - 1), GPU_KEY(ecc_corrected_agg, ULLONG_MAX - 1),
    GPU_KEY(ecc_uncorrected_agg, ULLONG_MAX - 1), GPU_KEY(remapped_corr, UINT_MAX),
    GPU_KEY(remapped_unc, UINT_MAX), GPU_KEY(remap_pending, 1), GPU_KEY(remap_failure, 1),
    GPU_KEY(pcie_tx_kbps, UINT_MAX), GPU_KEY(pcie_rx_kbps, UINT_MAX), GPU_KEY(pcie_gen, UINT_MAX),
    GPU_KEY(pcie_width, UINT_MAX), GPU_KEY(pcie_max_gen, UINT_MAX),
    GPU_KEY(pcie_max_width, UINT_MAX), GPU_KEY(nvlink_tx_kib, ULLONG_MAX),
    GPU_KEY(nvlink_rx_kib, ULLONG_MAX), GPU_KEY(mig, 1), GPU_KEY(mig_pending, 1),
    GPU_KEY(max_mig, MAX_MIG), GPU_KEY(virt, 4), GPU_KEY(pci_device_id, UINT_MAX),
    GPU_KEY(pci_subsystem_id, UINT_MAX), GPU_KEY(retired_sbe, 64), GPU_KEY(retired_dbe, 64),
    GPU_KEY(retired_pending, 1),
};

#define MIG_KEY(k, max) {#k, offsetof(sim_mig_t, k), max}
static const struct { const char *key; size_t off; unsigned long long max; } MIG_KEYS[] = {
    MIG_KEY(gi, UINT_MAX - 1), MIG_KEY(ci, UINT_MAX - 1), MIG_KEY(mem_total, ULLONG_MAX),
    MIG_KEY(mem_used, ULLONG_MAX), MIG_KEY(mem_reserved, ULLONG_MAX),
};

static sim_state_t S;      /* what the API serves */
static sim_state_t S_next; /* parse target */

/* The file S was loaded from. */
static char g_path[4096];
static dev_t g_dev;
static ino_t g_ino;
static off_t g_size;
static struct timespec g_mtime;
static int g_racy;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long long g_calls;
static unsigned g_refcount;

/* Handles: pointers into static arrays, stable for the life of the process. */
struct nvmlDevice_st { int gpu, mig; };
static struct nvmlDevice_st g_gpu_h[MAX_GPUS];
static struct nvmlDevice_st g_mig_h[MAX_GPUS][MAX_MIG];

struct nvmlEventSet_st {
    int used;
    unsigned long long mask[MAX_GPUS];
    unsigned ndel;
    struct { unsigned gpu; unsigned long long code; unsigned count; } del[MAX_XIDS];
};
static struct nvmlEventSet_st g_sets[MAX_SETS];

/* ------------------------------------------------------------------ */
/* Small helpers.                                                      */

static long long now_ns(clockid_t clk) {
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_ns(long long ns) {
    struct timespec ts = {(time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void lock(void) { pthread_mutex_lock(&g_lock); }
static void unlock(void) { pthread_mutex_unlock(&g_lock); }
static nvmlReturn_t leave(nvmlReturn_t r) {
    unlock();
    return r;
}
static void count_call(void) { __atomic_fetch_add(&g_calls, 1, __ATOMIC_RELAXED); }

/* Copies src into dst[cap]; 0 when it does not fit. */
static int copy_str(char *dst, size_t cap, const char *src) {
    size_t n = strlen(src);
    if (n + 1 > cap) return 0;
    memcpy(dst, src, n + 1);
    return 1;
}

static int parse_u64(const char *s, unsigned long long max, unsigned long long *out) {
    char *end;
    unsigned long long v;
    if (*s == '\0' || *s == '-' || *s == '+' || isspace((unsigned char)*s)) return 0;
    errno = 0;
    v = strtoull(s, &end, 0);
    if (errno != 0 || *end != '\0' || v > max) return 0;
    *out = v;
    return 1;
}

static int cat_by_name(const char *name) {
    size_t i;
    for (i = 0; i < sizeof CATS / sizeof CATS[0]; i++)
        if (strcmp(CATS[i].name, name) == 0) return CATS[i].cat;
    return -2;
}

/* ------------------------------------------------------------------ */
/* Scenario parsing.                                                   */

/* Splits line in place into tokens; double quotes group (and are removed), '#' outside
 * quotes starts a comment. Returns the token count, or -1 on an unterminated quote. */
static int tokenize(char *line, char **tok, int max) {
    char *r = line, *w = line;
    int n = 0;
    for (;;) {
        int inq = 0;
        char c;
        while (*r != '\0' && isspace((unsigned char)*r)) r++;
        if (*r == '\0' || *r == '#') return n;
        if (n == max) return -2;
        tok[n++] = w;
        while (*r != '\0' && (inq || (!isspace((unsigned char)*r) && *r != '#'))) {
            if (*r == '"') {
                inq = !inq;
                r++;
                continue;
            }
            *w++ = *r++;
        }
        if (inq) return -1;
        c = *r;
        *w++ = '\0';
        if (c == '\0' || c == '#') return n;
        if (r < w) r = w; /* the separator was overwritten by the NUL: step past it */
    }
}

static void gpu_defaults(sim_gpu_t *g, unsigned i) {
    memset(g, 0, sizeof *g);
    copy_str(g->name, sizeof g->name, "NVIDIA H100 80GB HBM3");
    snprintf(g->uuid, sizeof g->uuid, "GPU-00000000-0000-0000-0000-%012u", i);
    g->pci_bus = i + 1;
    g->mem_total = 85520809984ULL;
    g->mig_pending = UNSET;
    g->max_mig = DEFAULT_MAX_MIG;
    g->ecc_corrected_agg = UNSET;
    g->ecc_uncorrected_agg = UNSET;
    g->pcie_max_gen = UNSET;
    g->pcie_max_width = UNSET;
    g->pci_device_id = 0x233010DEu;
    g->pci_subsystem_id = 0x16C110DEu;
}

static void mig_defaults(sim_mig_t *m, unsigned gpu, unsigned slot) {
    memset(m, 0, sizeof *m);
    snprintf(m->uuid, sizeof m->uuid, "MIG-00000000-0000-0000-%04u-%012u", gpu, slot);
    m->gi = slot;
}

#define FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); return -1; } while (0)

static int parse_gpu_index(const char *s, unsigned *out, char *err, size_t errlen) {
    unsigned long long v;
    if (!parse_u64(s, MAX_GPUS - 1, &v)) FAIL("bad gpu index '%s' (0..%d)", s, MAX_GPUS - 1);
    *out = (unsigned)v;
    return 0;
}

static int set_gpu_key(sim_gpu_t *g, const char *key, const char *val, char *err, size_t errlen) {
    size_t i;
    if (strcmp(key, "name") == 0) {
        if (!copy_str(g->name, sizeof g->name, val)) FAIL("name too long");
        return 0;
    }
    if (strcmp(key, "uuid") == 0) {
        if (!copy_str(g->uuid, sizeof g->uuid, val)) FAIL("uuid too long");
        return 0;
    }
    if (strcmp(key, "pci") == 0) {
        unsigned d, b, dev, f;
        int used = -1;
        if (sscanf(val, "%x:%x:%x.%x%n", &d, &b, &dev, &f, &used) != 4 || used < 0 ||
            val[used] != '\0' || b > 0xFF || dev > 0x1F || f > 7)
            FAIL("bad pci '%s' (want DDDDDDDD:BB:DD.F)", val);
        g->pci_domain = d;
        g->pci_bus = b;
        g->pci_device = dev;
        return 0;
    }
    for (i = 0; i < sizeof GPU_KEYS / sizeof GPU_KEYS[0]; i++) {
        if (strcmp(key, GPU_KEYS[i].key) == 0) {
            unsigned long long v;
            if (!parse_u64(val, GPU_KEYS[i].max, &v))
                FAIL("bad value '%s' for %s (max %llu)", val, key, GPU_KEYS[i].max);
            *(unsigned long long *)((char *)g + GPU_KEYS[i].off) = v;
            return 0;
        }
    }
    FAIL("unknown gpu key '%s'", key);
}

static int set_mig_key(sim_mig_t *m, const char *key, const char *val, char *err, size_t errlen) {
    size_t i;
    if (strcmp(key, "name") == 0) {
        if (!copy_str(m->name, sizeof m->name, val)) FAIL("name too long");
        return 0;
    }
    if (strcmp(key, "uuid") == 0) {
        if (!copy_str(m->uuid, sizeof m->uuid, val)) FAIL("uuid too long");
        return 0;
    }
    for (i = 0; i < sizeof MIG_KEYS / sizeof MIG_KEYS[0]; i++) {
        if (strcmp(key, MIG_KEYS[i].key) == 0) {
            unsigned long long v;
            if (!parse_u64(val, MIG_KEYS[i].max, &v))
                FAIL("bad value '%s' for %s (max %llu)", val, key, MIG_KEYS[i].max);
            *(unsigned long long *)((char *)m + MIG_KEYS[i].off) = v;
            return 0;
        }
    }
    FAIL("unknown mig key '%s'", key);
}

/* Splits "key=value" in place. */
static int split_kv(char *t, char **key, char **val, char *err, size_t errlen) {
    char *eq = strchr(t, '=');
    if (eq == NULL || eq == t) FAIL("expected key=value, got '%s'", t);
    *eq = '\0';
    *key = t;
    *val = eq + 1;
    return 0;
}

static int parse_line(sim_state_t *st, char **tok, int n, char *err, size_t errlen) {
    const char *kw = tok[0];
    unsigned gi;
    int i;
    unsigned long long v;

    if (strcmp(kw, "driver") == 0 || strcmp(kw, "nvml_version") == 0) {
        char *dst = kw[0] == 'd' ? st->driver : st->nvml_version;
        if (n != 2) FAIL("usage: %s VERSION", kw);
        if (!copy_str(dst, STR_LEN, tok[1]) || tok[1][0] == '\0') FAIL("bad %s", kw);
        return 0;
    }
    if (strcmp(kw, "cuda") == 0) {
        if (n != 2 || !parse_u64(tok[1], INT_MAX, &v)) FAIL("usage: cuda NUMBER (e.g. 12040)");
        st->cuda = (long long)v;
        return 0;
    }
    if (strcmp(kw, "init_error") == 0) {
        if (n != 2 || !parse_u64(tok[1], UINT_MAX, &v)) FAIL("usage: init_error CODE");
        st->init_error = v;
        return 0;
    }
    if (strcmp(kw, "gpu") == 0) {
        sim_gpu_t *g;
        if (n < 2) FAIL("usage: gpu INDEX key=value...");
        if (parse_gpu_index(tok[1], &gi, err, errlen)) return -1;
        g = &st->gpus[gi];
        if (g->defined) FAIL("gpu %u defined twice", gi);
        g->defined = 1;
        for (i = 2; i < n; i++) {
            char *key, *val;
            if (split_kv(tok[i], &key, &val, err, errlen)) return -1;
            if (set_gpu_key(g, key, val, err, errlen)) return -1;
        }
        return 0;
    }
    if (strcmp(kw, "mig") == 0) {
        sim_mig_t *m;
        if (n < 3) FAIL("usage: mig GPU SLOT key=value...");
        if (parse_gpu_index(tok[1], &gi, err, errlen)) return -1;
        if (!parse_u64(tok[2], MAX_MIG - 1, &v)) FAIL("bad mig slot '%s' (0..%d)", tok[2], MAX_MIG - 1);
        m = &st->migs[gi][v];
        if (m->defined) FAIL("mig %u %llu defined twice", gi, v);
        m->defined = 1;
        st->gpus[gi].referenced = 1;
        for (i = 3; i < n; i++) {
            char *key, *val;
            if (split_kv(tok[i], &key, &val, err, errlen)) return -1;
            if (set_mig_key(m, key, val, err, errlen)) return -1;
        }
        return 0;
    }
    if (strcmp(kw, "proc") == 0) {
        sim_proc_t *p;
        char *slash;
        int have_pid = 0;
        if (n < 3) FAIL("usage: proc GPU[/SLOT] pid=N [used=BYTES|na]");
        if (st->nprocs == MAX_PROCS) FAIL("too many proc lines (max %d)", MAX_PROCS);
        p = &st->procs[st->nprocs];
        memset(p, 0, sizeof *p);
        p->mig = -1;
        slash = strchr(tok[1], '/');
        if (slash != NULL) {
            *slash = '\0';
            if (!parse_u64(slash + 1, MAX_MIG - 1, &v)) FAIL("bad mig slot '%s'", slash + 1);
            p->mig = (int)v;
        }
        if (parse_gpu_index(tok[1], &gi, err, errlen)) return -1;
        p->gpu = (int)gi;
        for (i = 2; i < n; i++) {
            char *key, *val;
            if (split_kv(tok[i], &key, &val, err, errlen)) return -1;
            if (strcmp(key, "pid") == 0) {
                if (!parse_u64(val, UINT_MAX, &v)) FAIL("bad pid '%s'", val);
                p->pid = (unsigned)v;
                have_pid = 1;
            } else if (strcmp(key, "used") == 0) {
                if (strcmp(val, "na") == 0) p->used = ULLONG_MAX;
                else if (!parse_u64(val, ULLONG_MAX - 1, &p->used)) FAIL("bad used '%s'", val);
            } else {
                FAIL("unknown proc key '%s'", key);
            }
        }
        if (!have_pid) FAIL("proc needs pid=");
        st->gpus[gi].referenced = 1;
        if (p->mig >= 0) st->migs[gi][p->mig].referenced = 1;
        st->nprocs++;
        return 0;
    }
    if (strcmp(kw, "unsupported") == 0) {
        sim_gpu_t *g;
        if (n < 3) FAIL("usage: unsupported GPU CATEGORY[,CATEGORY...]");
        if (parse_gpu_index(tok[1], &gi, err, errlen)) return -1;
        g = &st->gpus[gi];
        g->referenced = 1;
        for (i = 2; i < n; i++) {
            char *save = NULL, *name;
            for (name = strtok_r(tok[i], ",", &save); name != NULL; name = strtok_r(NULL, ",", &save)) {
                int c = cat_by_name(name);
                if (c == -2) FAIL("unknown category '%s'", name);
                g->unsupported |= c == CAT_ALL ? ~1u : 1u << c;
            }
        }
        return 0;
    }
    if (strcmp(kw, "lost") == 0) {
        if (n != 2) FAIL("usage: lost GPU");
        if (parse_gpu_index(tok[1], &gi, err, errlen)) return -1;
        st->gpus[gi].lost = 1;
        st->gpus[gi].referenced = 1;
        return 0;
    }
    if (strcmp(kw, "xid") == 0) {
        if (n != 3) FAIL("usage: xid GPU CODE");
        if (parse_gpu_index(tok[1], &gi, err, errlen)) return -1;
        if (!parse_u64(tok[2], ULLONG_MAX, &v)) FAIL("bad xid code '%s'", tok[2]);
        if (st->nxids == MAX_XIDS) FAIL("too many xid lines (max %d)", MAX_XIDS);
        st->xids[st->nxids].gpu = gi;
        st->xids[st->nxids].code = v;
        st->nxids++;
        st->gpus[gi].referenced = 1;
        return 0;
    }
    if (strcmp(kw, "stall") == 0) {
        unsigned long long ms;
        if (n != 4) FAIL("usage: stall GPU|system CATEGORY MILLISECONDS");
        if (!parse_u64(tok[3], UINT_MAX, &ms)) FAIL("bad milliseconds '%s'", tok[3]);
        if (strcmp(tok[1], "system") == 0) {
            int k;
            for (k = 0; k < NSYS; k++) {
                if (strcmp(tok[2], SYS_NAMES[k]) == 0) {
                    st->sys_stall_ms[k] = (unsigned)ms;
                    return 0;
                }
            }
            FAIL("unknown system category '%s' (init, shutdown, system, count, handle)", tok[2]);
        } else {
            int c;
            if (parse_gpu_index(tok[1], &gi, err, errlen)) return -1;
            c = cat_by_name(tok[2]);
            if (c == -2) FAIL("unknown category '%s'", tok[2]);
            if (c == CAT_ALL) st->gpus[gi].stall_all_ms = (unsigned)ms;
            else st->gpus[gi].stall_ms[c] = (unsigned)ms;
            st->gpus[gi].referenced = 1;
            return 0;
        }
    }
    FAIL("unknown keyword '%s'", kw);
}

static int finish(sim_state_t *st, char *err, size_t errlen) {
    unsigned i, k;
    for (i = 0; i < MAX_GPUS; i++)
        if (st->gpus[i].defined) st->ngpus = i + 1;
    for (i = 0; i < MAX_GPUS; i++) {
        sim_gpu_t *g = &st->gpus[i];
        if (!g->defined) {
            if (i < st->ngpus) FAIL("gpu %u missing (indices must be 0..%u)", i, st->ngpus - 1);
            if (g->referenced) FAIL("gpu %u is used but has no gpu line", i);
            continue;
        }
        if (g->mig_pending == UNSET) g->mig_pending = g->mig;
        if (g->ecc_corrected_agg == UNSET) g->ecc_corrected_agg = g->ecc_corrected;
        if (g->ecc_uncorrected_agg == UNSET) g->ecc_uncorrected_agg = g->ecc_uncorrected;
        if (g->pcie_max_gen == UNSET) g->pcie_max_gen = g->pcie_gen;
        if (g->pcie_max_width == UNSET) g->pcie_max_width = g->pcie_width;
        for (k = 0; k < MAX_MIG; k++) {
            sim_mig_t *m = &st->migs[i][k];
            if (m->referenced && !m->defined) FAIL("mig %u %u is used but has no mig line", i, k);
            if (m->defined && k >= g->max_mig) FAIL("mig %u %u: slot >= max_mig %llu", i, k, g->max_mig);
            if (m->defined && m->name[0] == '\0') snprintf(m->name, sizeof m->name, "%.80s MIG", g->name);
        }
    }
    if (st->driver[0] == '\0') copy_str(st->driver, sizeof st->driver, "550.54.15");
    if (st->nvml_version[0] == '\0')
        snprintf(st->nvml_version, sizeof st->nvml_version, "%d.%.60s", (int)(st->cuda / 1000), st->driver);
    return 0;
}

/* Parses text (NUL-terminated, modified in place) into st. */
static int parse_scenario(sim_state_t *st, char *text, char *err, size_t errlen) {
    char *line = text, *tok[MAX_TOKENS];
    unsigned i, k, lineno = 0;
    memset(st, 0, sizeof *st);
    st->cuda = 12040;
    for (i = 0; i < MAX_GPUS; i++) {
        gpu_defaults(&st->gpus[i], i);
        for (k = 0; k < MAX_MIG; k++) mig_defaults(&st->migs[i][k], i, k);
    }
    while (line != NULL) {
        char *next = strchr(line, '\n');
        char msg[400];
        int n;
        if (next != NULL) *next++ = '\0';
        lineno++;
        n = tokenize(line, tok, MAX_TOKENS);
        if (n == -1) FAIL("line %u: unterminated quote", lineno);
        if (n == -2) FAIL("line %u: too many tokens", lineno);
        if (n > 0 && parse_line(st, tok, n, msg, sizeof msg) != 0) FAIL("line %u: %s", lineno, msg);
        line = next;
    }
    if (finish(st, err, errlen) != 0) return -1;
    st->status = ST_OK;
    return 0;
}

/* Loads path into S; on a read failure S stays as it is (and is retried next call). */
static void load(const char *path, const struct stat *sb) {
    FILE *f = fopen(path, "rb");
    char *buf;
    size_t n;
    if (f == NULL) return;
    buf = malloc(MAX_FILE + 1);
    if (buf == NULL) {
        fclose(f);
        return;
    }
    n = fread(buf, 1, MAX_FILE + 1, f);
    fclose(f);
    if (n > MAX_FILE) {
        S.status = ST_BAD;
        snprintf(S.error, sizeof S.error, "file larger than %d bytes", MAX_FILE);
    } else {
        char err[512];
        buf[n] = '\0';
        if (memchr(buf, '\0', n) != NULL) {
            S.status = ST_BAD;
            snprintf(S.error, sizeof S.error, "NUL byte in file");
        } else if (parse_scenario(&S_next, buf, err, sizeof err) == 0) {
            memcpy(&S, &S_next, sizeof S);
        } else {
            S.status = ST_BAD;
            memcpy(S.error, err, sizeof S.error);
        }
    }
    free(buf);
    if (S.status == ST_BAD) fprintf(stderr, "nvml_sim: %s: %s\n", path, S.error);
    g_dev = sb->st_dev;
    g_ino = sb->st_ino;
    g_size = sb->st_size;
    g_mtime = sb->st_mtim;
    g_racy = now_ns(CLOCK_REALTIME) - ((long long)g_mtime.tv_sec * 1000000000LL + g_mtime.tv_nsec) < RACY_NS;
}

static void forget(void) {
    S.status = ST_NONE;
    g_dev = 0;
    g_ino = 0;
    g_size = -1;
    g_racy = 0;
}

/* Brings S up to date with the scenario file. Caller holds g_lock. */
static void refresh_locked(void) {
    const char *path = getenv("NVML_SIM_SCENARIO");
    struct stat sb;
    if (path == NULL || path[0] == '\0') {
        g_path[0] = '\0';
        forget();
        return;
    }
    if (strcmp(path, g_path) != 0) {
        if (!copy_str(g_path, sizeof g_path, path)) g_path[0] = '\0';
        forget();
    }
    if (stat(path, &sb) != 0) return; /* vanished: keep serving what was loaded */
    if (!g_racy && sb.st_dev == g_dev && sb.st_ino == g_ino && sb.st_size == g_size &&
        sb.st_mtim.tv_sec == g_mtime.tv_sec && sb.st_mtim.tv_nsec == g_mtime.tv_nsec)
        return;
    load(path, &sb);
}

/* ------------------------------------------------------------------ */
/* Call plumbing.                                                      */

static unsigned stall_ms_locked(int gpu, int cat) {
    const sim_gpu_t *g;
    unsigned a, b;
    if (S.status != ST_OK) return 0;
    if (gpu < 0) return cat >= 0 && cat < NSYS ? S.sys_stall_ms[cat] : 0;
    if ((unsigned)gpu >= S.ngpus) return 0;
    g = &S.gpus[gpu];
    a = g->stall_all_ms;
    b = cat > CAT_NONE && cat < NCAT ? g->stall_ms[cat] : 0;
    return a > b ? a : b;
}

/* Sleeps while a stall for (gpu, cat) lasts; called without g_lock. The scenario is
 * re-read every step, so lowering or removing the stall ends the sleep early. */
static void stall_wait(unsigned ms, int gpu, int cat) {
    long long start = now_ns(CLOCK_MONOTONIC);
    for (;;) {
        long long left = (long long)ms * 1000000LL - (now_ns(CLOCK_MONOTONIC) - start);
        if (left <= 0) return;
        sleep_ns(left < STEP_NS ? left : STEP_NS);
        lock();
        refresh_locked();
        ms = stall_ms_locked(gpu, cat);
        unlock();
    }
}

static nvmlReturn_t ready_locked(void) {
    if (g_refcount == 0) return NVML_ERROR_UNINITIALIZED;
    if (S.status != ST_OK) return NVML_ERROR_UNKNOWN;
    return NVML_SUCCESS;
}

/* Starts a system-level call: on success returns with g_lock held. */
static nvmlReturn_t sys_enter(int sys) {
    nvmlReturn_t r;
    unsigned ms;
    count_call();
    lock();
    refresh_locked();
    if ((r = ready_locked()) != NVML_SUCCESS) return leave(r);
    ms = stall_ms_locked(-1, sys);
    if (ms == 0) return NVML_SUCCESS;
    unlock();
    stall_wait(ms, -1, sys);
    lock();
    refresh_locked();
    if ((r = ready_locked()) != NVML_SUCCESS) return leave(r);
    return NVML_SUCCESS;
}

static int decode_handle(nvmlDevice_t h, int *gpu, int *mig) {
    uintptr_t p = (uintptr_t)h, b = (uintptr_t)g_gpu_h;
    if (p >= b && p < b + sizeof g_gpu_h && (p - b) % sizeof g_gpu_h[0] == 0) {
        *gpu = (int)((p - b) / sizeof g_gpu_h[0]);
        *mig = -1;
        return 1;
    }
    b = (uintptr_t)g_mig_h;
    if (p >= b && p < b + sizeof g_mig_h && (p - b) % sizeof g_mig_h[0][0] == 0) {
        size_t k = (p - b) / sizeof g_mig_h[0][0];
        *gpu = (int)(k / MAX_MIG);
        *mig = (int)(k % MAX_MIG);
        return 1;
    }
    return 0;
}

static nvmlDevice_t gpu_handle(int gpu) {
    g_gpu_h[gpu].gpu = gpu;
    g_gpu_h[gpu].mig = -1;
    return &g_gpu_h[gpu];
}

static nvmlDevice_t mig_handle(int gpu, int mig) {
    g_mig_h[gpu][mig].gpu = gpu;
    g_mig_h[gpu][mig].mig = mig;
    return &g_mig_h[gpu][mig];
}

static int mig_visible(int gpu, int mig) {
    const sim_gpu_t *g = &S.gpus[gpu];
    return g->mig == 1 && (unsigned long long)mig < g->max_mig && S.migs[gpu][mig].defined;
}

typedef struct { int gpu, mig; } sim_ref_t;

#define F_MIG_OK 1      /* MIG device handles are served */
#define F_MIG_INVALID 2 /* MIG device handles: INVALID_ARGUMENT (else NOT_SUPPORTED) */
#define F_GPU_INVALID 4 /* GPU handles: INVALID_ARGUMENT (MIG-only call) */
#define F_PER_FIELD 8   /* `unsupported` is reported per field, not by the call */

static nvmlReturn_t check_handle_locked(nvmlDevice_t device, sim_ref_t *ref) {
    nvmlReturn_t r = ready_locked();
    if (r != NVML_SUCCESS) return r;
    if (!decode_handle(device, &ref->gpu, &ref->mig)) return NVML_ERROR_INVALID_ARGUMENT;
    if ((unsigned)ref->gpu >= S.ngpus) return NVML_ERROR_INVALID_ARGUMENT;
    if (ref->mig >= 0 && !mig_visible(ref->gpu, ref->mig)) return NVML_ERROR_INVALID_ARGUMENT;
    return NVML_SUCCESS;
}

/* Starts a per-device call: counts it, validates the handle, sleeps through a stall
 * (without the lock), then applies `lost` and `unsupported`. On success returns with
 * g_lock held; the caller ends with leave(). */
static nvmlReturn_t dev_enter(nvmlDevice_t device, int cat, unsigned flags, sim_ref_t *ref) {
    nvmlReturn_t r;
    unsigned ms;
    const sim_gpu_t *g;
    count_call();
    lock();
    refresh_locked();
    if ((r = check_handle_locked(device, ref)) != NVML_SUCCESS) return leave(r);
    ms = stall_ms_locked(ref->gpu, cat);
    if (ms > 0) {
        unlock();
        stall_wait(ms, ref->gpu, cat);
        lock();
        refresh_locked();
        if ((r = check_handle_locked(device, ref)) != NVML_SUCCESS) return leave(r);
    }
    g = &S.gpus[ref->gpu];
    if (g->lost) return leave(NVML_ERROR_GPU_IS_LOST);
    if (ref->mig >= 0 && !(flags & F_MIG_OK))
        return leave(flags & F_MIG_INVALID ? NVML_ERROR_INVALID_ARGUMENT : NVML_ERROR_NOT_SUPPORTED);
    if (ref->mig < 0 && (flags & F_GPU_INVALID)) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (cat > CAT_NONE && !(flags & F_PER_FIELD) && (g->unsupported & (1u << cat)))
        return leave(NVML_ERROR_NOT_SUPPORTED);
    return NVML_SUCCESS;
}

#define ENTER(device, cat, flags)                                          \
    sim_ref_t ref;                                                         \
    const sim_gpu_t *g;                                                    \
    do {                                                                   \
        nvmlReturn_t r_ = dev_enter((device), (cat), (flags), &ref);       \
        if (r_ != NVML_SUCCESS) return r_;                                 \
        g = &S.gpus[ref.gpu];                                              \
        (void)g;                                                           \
    } while (0)

#define REQUIRE(cond) do { if (!(cond)) return leave(NVML_ERROR_INVALID_ARGUMENT); } while (0)

static nvmlReturn_t put_str(char *dst, unsigned length, const char *src) {
    if (dst == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    return copy_str(dst, length, src) ? NVML_SUCCESS : NVML_ERROR_INSUFFICIENT_SIZE;
}

/* ------------------------------------------------------------------ */
/* Initialization and system queries.                                  */

static nvmlReturn_t do_init(void) {
    unsigned ms;
    count_call();
    lock();
    refresh_locked();
    ms = stall_ms_locked(-1, SYS_INIT);
    if (ms > 0) {
        unlock();
        stall_wait(ms, -1, SYS_INIT);
        lock();
        refresh_locked();
    }
    if (S.status == ST_NONE) return leave(NVML_ERROR_DRIVER_NOT_LOADED);
    if (S.status == ST_BAD) return leave(NVML_ERROR_UNKNOWN);
    if (S.init_error != 0) return leave((nvmlReturn_t)S.init_error);
    g_refcount++;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlInit_v2(void) { return do_init(); }

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    return do_init();
}

nvmlReturn_t nvmlShutdown(void) {
    nvmlReturn_t r = sys_enter(SYS_SHUTDOWN);
    if (r != NVML_SUCCESS) return r;
    if (--g_refcount == 0) memset(g_sets, 0, sizeof g_sets);
    return leave(NVML_SUCCESS);
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_ALREADY_INITIALIZED: return "Already Initialized";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_INSUFFICIENT_POWER: return "Insufficient External Power";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_IRQ_ISSUE: return "Interrupt Request Issue";
    case NVML_ERROR_LIBRARY_NOT_FOUND: return "NVML Shared Library Not Found";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case NVML_ERROR_CORRUPTED_INFOROM: return "Corrupted infoROM";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_RESET_REQUIRED: return "GPU requires restart";
    case NVML_ERROR_OPERATING_SYSTEM: return "The operating system has blocked the request.";
    case NVML_ERROR_LIB_RM_VERSION_MISMATCH: return "RM has detected an NVML/RM version mismatch.";
    case NVML_ERROR_IN_USE: return "In use by another client";
    case NVML_ERROR_MEMORY: return "Insufficient Memory";
    case NVML_ERROR_NO_DATA: return "No data";
    case NVML_ERROR_INSUFFICIENT_RESOURCES: return "Insufficient resources";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    case NVML_ERROR_DEPRECATED: return "Deprecated";
    case NVML_ERROR_NOT_READY: return "Not ready";
    case NVML_ERROR_GPU_NOT_FOUND: return "GPU not found";
    case NVML_ERROR_INVALID_STATE: return "Invalid state";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    nvmlReturn_t r = sys_enter(SYS_SYSTEM);
    if (r != NVML_SUCCESS) return r;
    return leave(put_str(version, length, S.driver));
}

nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    nvmlReturn_t r = sys_enter(SYS_SYSTEM);
    if (r != NVML_SUCCESS) return r;
    return leave(put_str(version, length, S.nvml_version));
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *cudaDriverVersion) {
    nvmlReturn_t r = sys_enter(SYS_SYSTEM);
    if (r != NVML_SUCCESS) return r;
    REQUIRE(cudaDriverVersion != NULL);
    *cudaDriverVersion = (int)S.cuda;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *cudaDriverVersion) {
    nvmlReturn_t r = sys_enter(SYS_SYSTEM);
    if (r != NVML_SUCCESS) return r;
    REQUIRE(cudaDriverVersion != NULL);
    *cudaDriverVersion = (int)S.cuda;
    return leave(NVML_SUCCESS);
}

/* ------------------------------------------------------------------ */
/* Enumeration and identity.                                           */

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount) {
    nvmlReturn_t r = sys_enter(SYS_COUNT);
    if (r != NVML_SUCCESS) return r;
    REQUIRE(deviceCount != NULL);
    *deviceCount = S.ngpus;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    nvmlReturn_t r = sys_enter(SYS_HANDLE);
    if (r != NVML_SUCCESS) return r;
    REQUIRE(device != NULL && index < S.ngpus);
    *device = gpu_handle((int)index);
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    unsigned i, k;
    nvmlReturn_t r = sys_enter(SYS_HANDLE);
    if (r != NVML_SUCCESS) return r;
    REQUIRE(uuid != NULL && device != NULL);
    for (i = 0; i < S.ngpus; i++) {
        if (strcmp(S.gpus[i].uuid, uuid) == 0) {
            *device = gpu_handle((int)i);
            return leave(NVML_SUCCESS);
        }
        for (k = 0; k < MAX_MIG; k++) {
            if (mig_visible((int)i, (int)k) && strcmp(S.migs[i][k].uuid, uuid) == 0) {
                *device = mig_handle((int)i, (int)k);
                return leave(NVML_SUCCESS);
            }
        }
    }
    return leave(NVML_ERROR_NOT_FOUND);
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    ENTER(device, CAT_INDEX, F_MIG_OK);
    REQUIRE(index != NULL);
    *index = (unsigned)(ref.mig >= 0 ? ref.mig : ref.gpu);
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    ENTER(device, CAT_NAME, F_MIG_OK);
    return leave(put_str(name, length, ref.mig >= 0 ? S.migs[ref.gpu][ref.mig].name : g->name));
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    ENTER(device, CAT_UUID, F_MIG_OK);
    return leave(put_str(uuid, length, ref.mig >= 0 ? S.migs[ref.gpu][ref.mig].uuid : g->uuid));
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci) {
    ENTER(device, CAT_PCI, 0);
    REQUIRE(pci != NULL);
    memset(pci, 0, sizeof *pci);
    pci->domain = g->pci_domain;
    pci->bus = g->pci_bus;
    pci->device = g->pci_device;
    pci->pciDeviceId = (unsigned)g->pci_device_id;
    pci->pciSubSystemId = (unsigned)g->pci_subsystem_id;
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, NVML_DEVICE_PCI_BUS_ID_LEGACY_FMT,
             pci->domain & 0xFFFFu, pci->bus & 0xFFu, pci->device & 0x1Fu);
    snprintf(pci->busId, sizeof pci->busId, NVML_DEVICE_PCI_BUS_ID_FMT, pci->domain,
             pci->bus & 0xFFu, pci->device & 0x1Fu);
    return leave(NVML_SUCCESS);
}

/* ------------------------------------------------------------------ */
/* Telemetry.                                                          */

static void mem_of(const sim_ref_t *ref, unsigned long long *total, unsigned long long *used,
                   unsigned long long *reserved) {
    if (ref->mig >= 0) {
        const sim_mig_t *m = &S.migs[ref->gpu][ref->mig];
        *total = m->mem_total;
        *used = m->mem_used;
        *reserved = m->mem_reserved;
    } else {
        const sim_gpu_t *g = &S.gpus[ref->gpu];
        *total = g->mem_total;
        *used = g->mem_used;
        *reserved = g->mem_reserved;
    }
    if (*used > *total) *used = *total;
    if (*reserved > *used) *reserved = *used;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    unsigned long long total, used, reserved;
    ENTER(device, CAT_MEMORY, F_MIG_OK);
    REQUIRE(memory != NULL);
    mem_of(&ref, &total, &used, &reserved);
    memory->total = total;
    memory->used = used;
    memory->free = total - used;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    unsigned long long total, used, reserved;
    ENTER(device, CAT_MEMORY, F_MIG_OK);
    REQUIRE(memory != NULL);
    if (memory->version != nvmlMemory_v2) return leave(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    mem_of(&ref, &total, &used, &reserved);
    memory->total = total;
    memory->reserved = reserved;
    memory->used = used - reserved;
    memory->free = total - used;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization) {
    ENTER(device, CAT_UTIL, 0);
    REQUIRE(utilization != NULL);
    utilization->gpu = (unsigned)g->util;
    utilization->memory = (unsigned)g->mem_util;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
    ENTER(device, CAT_POWER, 0);
    REQUIRE(power != NULL);
    *power = (unsigned)g->power_mw;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device, unsigned long long *energy) {
    ENTER(device, CAT_ENERGY, 0);
    REQUIRE(energy != NULL);
    *energy = g->energy_mj;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, nvmlTemperatureSensors_t sensorType,
                                      unsigned int *temp) {
    ENTER(device, CAT_TEMP, 0);
    REQUIRE(temp != NULL && sensorType == NVML_TEMPERATURE_GPU);
    *temp = (unsigned)g->temp;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, nvmlClockType_t type, unsigned int *clock) {
    ENTER(device, CAT_CLOCKS, 0);
    REQUIRE(clock != NULL);
    switch (type) {
    case NVML_CLOCK_GRAPHICS:
    case NVML_CLOCK_SM: *clock = (unsigned)g->sm_clock; break;
    case NVML_CLOCK_MEM: *clock = (unsigned)g->mem_clock; break;
    case NVML_CLOCK_VIDEO: *clock = (unsigned)g->video_clock; break;
    default: return leave(NVML_ERROR_INVALID_ARGUMENT);
    }
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t device,
                                                    unsigned long long *clocksEventReasons) {
    ENTER(device, CAT_CLOCKS_EVENT, 0);
    REQUIRE(clocksEventReasons != NULL);
    *clocksEventReasons = g->clocks_event;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t device,
                                                       unsigned long long *clocksThrottleReasons) {
    ENTER(device, CAT_CLOCKS_EVENT, 0);
    REQUIRE(clocksThrottleReasons != NULL);
    *clocksThrottleReasons = g->clocks_event;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, nvmlMemoryErrorType_t errorType,
                                         nvmlEccCounterType_t counterType,
                                         unsigned long long *eccCounts) {
    int corrected = errorType == NVML_MEMORY_ERROR_TYPE_CORRECTED;
    int aggregate = counterType == NVML_AGGREGATE_ECC;
    ENTER(device, CAT_ECC, 0);
    REQUIRE(eccCounts != NULL);
    REQUIRE(corrected || errorType == NVML_MEMORY_ERROR_TYPE_UNCORRECTED);
    REQUIRE(aggregate || counterType == NVML_VOLATILE_ECC);
    if (aggregate) *eccCounts = corrected ? g->ecc_corrected_agg : g->ecc_uncorrected_agg;
    else *eccCounts = corrected ? g->ecc_corrected : g->ecc_uncorrected;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetRetiredPages(nvmlDevice_t device,
                                       nvmlPageRetirementCause_t cause,
                                       unsigned int *pageCount, unsigned long long *addresses) {
    ENTER(device, CAT_RETIRED, 0);
    REQUIRE(pageCount != NULL);
    unsigned long long n;
    if (cause == NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS) n = g->retired_sbe;
    else if (cause == NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR) n = g->retired_dbe;
    else return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (addresses == NULL || *pageCount < n) {
        *pageCount = (unsigned)n;
        return leave(n == 0 ? NVML_SUCCESS : NVML_ERROR_INSUFFICIENT_SIZE);
    }
    for (unsigned long long i = 0; i < n; i++)
        addresses[i] = 0x1000000ULL * (cause + 1) + 0x1000ULL * i;
    *pageCount = (unsigned)n;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(nvmlDevice_t device,
                                                    nvmlEnableState_t *isPending) {
    ENTER(device, CAT_RETIRED, 0);
    REQUIRE(isPending != NULL);
    *isPending = g->retired_pending ? NVML_FEATURE_ENABLED : NVML_FEATURE_DISABLED;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t device, unsigned int *corrRows,
                                       unsigned int *uncRows, unsigned int *isPending,
                                       unsigned int *failureOccurred) {
    ENTER(device, CAT_REMAP, 0);
    REQUIRE(corrRows != NULL && uncRows != NULL && isPending != NULL && failureOccurred != NULL);
    *corrRows = (unsigned)g->remapped_corr;
    *uncRows = (unsigned)g->remapped_unc;
    *isPending = (unsigned)g->remap_pending;
    *failureOccurred = (unsigned)g->remap_failure;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetPcieThroughput(nvmlDevice_t device, nvmlPcieUtilCounter_t counter,
                                         unsigned int *value) {
    ENTER(device, CAT_PCIE, 0);
    REQUIRE(value != NULL);
    if (counter == NVML_PCIE_UTIL_TX_BYTES) *value = (unsigned)g->pcie_tx_kbps;
    else if (counter == NVML_PCIE_UTIL_RX_BYTES) *value = (unsigned)g->pcie_rx_kbps;
    else return leave(NVML_ERROR_INVALID_ARGUMENT);
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetCurrPcieLinkGeneration(nvmlDevice_t device, unsigned int *currLinkGen) {
    ENTER(device, CAT_PCIE_LINK, 0);
    REQUIRE(currLinkGen != NULL);
    *currLinkGen = (unsigned)g->pcie_gen;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetCurrPcieLinkWidth(nvmlDevice_t device, unsigned int *currLinkWidth) {
    ENTER(device, CAT_PCIE_LINK, 0);
    REQUIRE(currLinkWidth != NULL);
    *currLinkWidth = (unsigned)g->pcie_width;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetMaxPcieLinkGeneration(nvmlDevice_t device, unsigned int *maxLinkGen) {
    ENTER(device, CAT_PCIE_LINK, 0);
    REQUIRE(maxLinkGen != NULL);
    *maxLinkGen = (unsigned)g->pcie_max_gen;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetMaxPcieLinkWidth(nvmlDevice_t device, unsigned int *maxLinkWidth) {
    ENTER(device, CAT_PCIE_LINK, 0);
    REQUIRE(maxLinkWidth != NULL);
    *maxLinkWidth = (unsigned)g->pcie_max_width;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t device, int valuesCount, nvmlFieldValue_t *values) {
    int i;
    long long ts = now_ns(CLOCK_REALTIME) / 1000;
    ENTER(device, CAT_NVLINK, F_PER_FIELD);
    REQUIRE(valuesCount >= 0 && (valuesCount == 0 || values != NULL));
    for (i = 0; i < valuesCount; i++) {
        nvmlFieldValue_t *v = &values[i];
        int tx = v->fieldId == NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX;
        int rx = v->fieldId == NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX;
        v->timestamp = ts;
        v->latencyUsec = 0;
        if ((tx || rx) && v->scopeId == UINT_MAX && !(g->unsupported & (1u << CAT_NVLINK))) {
            v->valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
            v->value.ullVal = tx ? g->nvlink_tx_kib : g->nvlink_rx_kib;
            v->nvmlReturn = NVML_SUCCESS;
        } else {
            v->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
        }
    }
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetVirtualizationMode(nvmlDevice_t device, nvmlGpuVirtualizationMode_t *pVirtualMode) {
    ENTER(device, CAT_VIRT, 0);
    REQUIRE(pVirtualMode != NULL);
    *pVirtualMode = (nvmlGpuVirtualizationMode_t)g->virt;
    return leave(NVML_SUCCESS);
}

/* ------------------------------------------------------------------ */
/* MIG.                                                                */

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode, unsigned int *pendingMode) {
    ENTER(device, CAT_MIG, F_MIG_INVALID);
    REQUIRE(currentMode != NULL && pendingMode != NULL);
    *currentMode = (unsigned)g->mig;
    *pendingMode = (unsigned)g->mig_pending;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count) {
    /* "Returns zero if MIG is not supported or enabled": never NOT_SUPPORTED. */
    ENTER(device, CAT_MIG, F_MIG_INVALID | F_PER_FIELD);
    REQUIRE(count != NULL);
    *count = g->mig == 1 && !(g->unsupported & (1u << CAT_MIG)) ? (unsigned)g->max_mig : 0;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                 nvmlDevice_t *migDevice) {
    ENTER(device, CAT_MIG, F_MIG_INVALID);
    REQUIRE(migDevice != NULL);
    REQUIRE(g->mig == 1 && index < g->max_mig);
    if (!mig_visible(ref.gpu, (int)index)) return leave(NVML_ERROR_NOT_FOUND);
    *migDevice = mig_handle(ref.gpu, (int)index);
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device, unsigned int *isMigDevice) {
    ENTER(device, CAT_NONE, F_MIG_OK);
    REQUIRE(isMigDevice != NULL);
    *isMigDevice = ref.mig >= 0;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int *id) {
    ENTER(device, CAT_NONE, F_MIG_OK | F_GPU_INVALID);
    REQUIRE(id != NULL);
    *id = (unsigned)S.migs[ref.gpu][ref.mig].gi;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t device, unsigned int *id) {
    ENTER(device, CAT_NONE, F_MIG_OK | F_GPU_INVALID);
    REQUIRE(id != NULL);
    *id = (unsigned)S.migs[ref.gpu][ref.mig].ci;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t migDevice, nvmlDevice_t *device) {
    ENTER(migDevice, CAT_NONE, F_MIG_OK | F_GPU_INVALID);
    REQUIRE(device != NULL);
    *device = gpu_handle(ref.gpu);
    return leave(NVML_SUCCESS);
}

/* ------------------------------------------------------------------ */
/* Processes.                                                          */

static int proc_visible(const sim_ref_t *ref, const sim_proc_t *p) {
    if (p->gpu != ref->gpu) return 0;
    if (ref->mig >= 0) return p->mig == ref->mig;
    return p->mig < 0 || mig_visible(p->gpu, p->mig);
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                     nvmlProcessInfo_t *infos) {
    unsigned i, n = 0;
    ENTER(device, CAT_PROCESSES, F_MIG_OK);
    REQUIRE(infoCount != NULL);
    for (i = 0; i < S.nprocs; i++) n += (unsigned)proc_visible(&ref, &S.procs[i]);
    if (*infoCount < n) {
        *infoCount = n;
        return leave(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    REQUIRE(n == 0 || infos != NULL);
    n = 0;
    for (i = 0; i < S.nprocs; i++) {
        const sim_proc_t *p = &S.procs[i];
        nvmlProcessInfo_t *out;
        if (!proc_visible(&ref, p)) continue;
        out = &infos[n++];
        memset(out, 0, sizeof *out);
        out->pid = p->pid;
        out->usedGpuMemory = p->used;
        out->gpuInstanceId = p->mig >= 0 ? (unsigned)S.migs[p->gpu][p->mig].gi : NO_INSTANCE;
        out->computeInstanceId = p->mig >= 0 ? (unsigned)S.migs[p->gpu][p->mig].ci : NO_INSTANCE;
    }
    *infoCount = n;
    return leave(NVML_SUCCESS);
}

/* ------------------------------------------------------------------ */
/* Events.                                                             */

static int decode_set(nvmlEventSet_t set) {
    uintptr_t p = (uintptr_t)set, b = (uintptr_t)g_sets;
    size_t k;
    if (p < b || p >= b + sizeof g_sets || (p - b) % sizeof g_sets[0] != 0) return -1;
    k = (p - b) / sizeof g_sets[0];
    return g_sets[k].used ? (int)k : -1;
}

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device, unsigned long long *eventTypes) {
    ENTER(device, CAT_EVENTS, 0);
    REQUIRE(eventTypes != NULL);
    *eventTypes = SUPPORTED_EVENTS;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    int i;
    nvmlReturn_t r;
    count_call();
    lock();
    refresh_locked();
    if ((r = ready_locked()) != NVML_SUCCESS) return leave(r);
    REQUIRE(set != NULL);
    for (i = 0; i < MAX_SETS; i++) {
        if (!g_sets[i].used) {
            memset(&g_sets[i], 0, sizeof g_sets[i]);
            g_sets[i].used = 1;
            *set = &g_sets[i];
            return leave(NVML_SUCCESS);
        }
    }
    return leave(NVML_ERROR_MEMORY);
}

nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long eventTypes, nvmlEventSet_t set) {
    int k;
    ENTER(device, CAT_EVENTS, 0);
    k = decode_set(set);
    REQUIRE(k >= 0);
    if (eventTypes & ~(unsigned long long)SUPPORTED_EVENTS) return leave(NVML_ERROR_NOT_SUPPORTED);
    g_sets[k].mask[ref.gpu] |= eventTypes;
    return leave(NVML_SUCCESS);
}

/* Each xid line is delivered once per event set: the set remembers how many lines with
 * the same (gpu, code) it has delivered, and the next identical line is new. */
static int deliver_locked(struct nvmlEventSet_st *es, nvmlEventData_t *data) {
    unsigned i, j;
    for (j = 0; j < es->ndel; j++) {
        unsigned have = 0;
        for (i = 0; i < S.nxids; i++)
            have += S.xids[i].gpu == es->del[j].gpu && S.xids[i].code == es->del[j].code;
        if (es->del[j].count > have) es->del[j].count = have;
    }
    for (i = 0; i < S.nxids; i++) {
        const sim_xid_t *x = &S.xids[i];
        unsigned ordinal = 0;
        if (x->gpu >= S.ngpus || !(es->mask[x->gpu] & nvmlEventTypeXidCriticalError)) continue;
        for (j = 0; j <= i; j++) ordinal += S.xids[j].gpu == x->gpu && S.xids[j].code == x->code;
        for (j = 0; j < es->ndel; j++)
            if (es->del[j].gpu == x->gpu && es->del[j].code == x->code) break;
        if (j == es->ndel) {
            if (es->ndel == MAX_XIDS) continue;
            es->del[j].gpu = x->gpu;
            es->del[j].code = x->code;
            es->del[j].count = 0;
            es->ndel++;
        }
        if (es->del[j].count >= ordinal) continue;
        es->del[j].count++;
        memset(data, 0, sizeof *data);
        data->device = gpu_handle((int)x->gpu);
        data->eventType = nvmlEventTypeXidCriticalError;
        data->eventData = x->code;
        data->gpuInstanceId = NO_INSTANCE;
        data->computeInstanceId = NO_INSTANCE;
        return 1;
    }
    return 0;
}

nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms) {
    long long start = now_ns(CLOCK_MONOTONIC), limit = (long long)timeoutms * 1000000LL;
    count_call();
    for (;;) {
        nvmlReturn_t r;
        int k;
        long long left;
        lock();
        refresh_locked();
        if ((r = ready_locked()) != NVML_SUCCESS) return leave(r);
        k = decode_set(set);
        REQUIRE(k >= 0 && data != NULL);
        if (deliver_locked(&g_sets[k], data)) return leave(NVML_SUCCESS);
        unlock();
        left = limit - (now_ns(CLOCK_MONOTONIC) - start);
        if (left <= 0) return NVML_ERROR_TIMEOUT;
        sleep_ns(left < STEP_NS ? left : STEP_NS);
    }
}

nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    int k;
    nvmlReturn_t r;
    count_call();
    lock();
    refresh_locked();
    if ((r = ready_locked()) != NVML_SUCCESS) return leave(r);
    k = decode_set(set);
    REQUIRE(k >= 0);
    g_sets[k].used = 0;
    return leave(NVML_SUCCESS);
}

/* ------------------------------------------------------------------ */
/* Simulator-only entry points.                                        */

unsigned long long nvmlSimCallCount(void) { return __atomic_load_n(&g_calls, __ATOMIC_RELAXED); }

void nvmlSimReset(void) {
    lock();
    g_refcount = 0;
    memset(g_sets, 0, sizeof g_sets);
    unlock();
}
