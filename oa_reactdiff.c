/*
 * oa_reactdiff.c - a dependency-light C reference implementation of OA-ReactDiff
 * (Duan, Du, Jia, Kulik, "Accurate transition state generation with an object-aware
 * equivariant elementary reaction diffusion model", Nat. Comput. Sci. 3, 1045 (2023)).
 *
 * Reactant (R), transition state (TS) and product (P) are diffused together as three
 * objects. The denoiser is LEFTNet, made object-aware: geometry (edge frames, radial basis,
 * equivariant messages) only flows inside a fragment, while scalar messages cross fragments.
 * Sampling either generates all three fragments from atom types, or fixes R and P and
 * inpaints the TS with RePaint resampling.
 *
 * The file reads top to bottom in the order data flows:
 *   utilities -> weights file -> model parameters -> kernels -> LEFTNet layers ->
 *   denoiser / confidence wrappers -> noise schedules -> randomness -> samplers -> CLI.
 * Every layer function names the upstream module it reproduces (github.com/chenruduan/
 * OAReactDiff, commit 543aaa8) so an auditor can read both side by side.
 *
 * Builds: float32 (default) and float64 (-DOARD_DOUBLE), from this one source.
 * Only libc and libm; OpenMP is used when compiled with -fopenmp.
 */
#define _POSIX_C_SOURCE 200809L
#include "oa_reactdiff.h"

#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>    /* open: O_EXCL temporary files, O_NONBLOCK reads */
#include <sys/stat.h> /* fstat: only regular files are read whole */
#include <time.h>     /* clock_gettime: names of temporary files */
#include <unistd.h>   /* sysconf: the physical memory, for the memory limit */
#endif

typedef oard_real real;

#define OARD_VERSION "0.1.0"
#define EPS_FRAME 1e-6 /* upstream leftnet.py EPS, added to every norm it divides by */
#define OARD_PI 3.14159265358979323846

/* Edges are processed in blocks of EDGE_BLOCK rows: big enough for the matmul kernel to
 * reuse every weight row, small enough for a block of inputs to stay in cache. */
#define EDGE_BLOCK 192

/* the calling thread and the team size inside an OpenMP parallel region */
#ifdef _OPENMP
#define THREAD_ID omp_get_thread_num()
#define THREAD_COUNT omp_get_num_threads()
#else
#define THREAD_ID 0
#define THREAD_COUNT 1
#endif

/* Runtime dispatch of the hot kernels (matmul, SiLU): a portable x86 build (GCC or clang,
 * baseline target without AVX2) also compiles them for AVX2+FMA and for AVX-512 and picks
 * the widest path the CPU has when the program starts (kernel_path_init). The paths are the
 * same C code; they differ in vector width, in fused multiply-adds and in SiLU's
 * exponential (see silu_expf), so results differ between paths in the last bits (each
 * path passes every golden case) and are deterministic on each. OARD_ISA=generic|avx2|avx512
 * in the environment selects a path (tests run every available one). A build for the
 * machine (-march=native) or for another architecture has one path, its target's. */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(__AVX2__) && !defined(OARD_NO_DISPATCH)
#define OARD_DISPATCH 1
#endif

/* Vector width in bytes. It sets the weight padding and the kernels' tile sizes (speed,
 * never results beyond rounding): the kernels are plain C loops that the compiler
 * vectorises; no intrinsics. With dispatch the padding is for the widest path (64 bytes),
 * and each path tiles with its own width (KP_VW). */
#if defined(__AVX512F__) || defined(OARD_DISPATCH)
#define VEC_BYTES 64
#elif defined(__AVX__)
#define VEC_BYTES 32
#else
#define VEC_BYTES 16
#endif
#define VW ((int)(VEC_BYTES / sizeof(real))) /* reals per vector */
#define TILE_M 6                              /* matmul output tile: TILE_M rows x TILE_N columns */
#define TILE_N (2 * (int)(VEC_BYTES / sizeof(real))) /* two vectors */
#define PARAM_ALIGN 16                      /* every parameter tensor starts on 16 reals */

const char *oard_version(void) { return OARD_VERSION " (" OARD_REAL_NAME ")"; }

/* ------------------------------------------------------------------------------------ */
/* Errors                                                                                */

/* src into dst (n bytes, NUL-terminated, cut if need be) with every byte a terminal could
 * act on written as \xNN: control characters (newline and escape included), DEL, the C1
 * controls (U+0080..U+009F) and bytes that are not UTF-8. Messages and `info` quote names
 * and values from files this way, so a crafted file cannot end a message line early or
 * drive the terminal. Idempotent: its output has nothing left to escape. */
static void escape_text(char *dst, size_t n, const char *src) {
    const unsigned char *s = (const unsigned char *)src;
    size_t o = 0;
    while (*s && o + 1 < n) {
        int len = *s < 0x80 ? 1 : (*s & 0xE0) == 0xC0 ? 2 : (*s & 0xF0) == 0xE0 ? 3 : (*s & 0xF8) == 0xF0 ? 4 : 0;
        for (int k = 1; k < len; k++)
            if ((s[k] & 0xC0) != 0x80) len = 0;
        if (len == 2 && (s[0] < 0xC2 || (s[0] == 0xC2 && s[1] < 0xA0))) len = 0; /* overlong, or a C1 control */
        if (len == 1 && (*s < 0x20 || *s == 0x7F)) len = 0;
        if (len == 0) {
            if (o + 5 >= n) break;
            snprintf(dst + o, n - o, "\\x%02x", *s++);
            o += 4;
        } else {
            if (o + (size_t)len >= n) break;
            memcpy(dst + o, s, (size_t)len); o += (size_t)len; s += len;
        }
    }
    dst[o] = 0;
}

static int fail(char *err, int code, const char *fmt, ...) {
    if (err) {
        char raw[OARD_ERRLEN];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(raw, sizeof(raw), fmt, ap);
        va_end(ap);
        escape_text(err, OARD_ERRLEN, raw);
    }
    return code;
}

#if defined(__clang__)
#define NO_FMA_BEGIN _Pragma("clang fp contract(off)")
#define NO_FMA_FN
#elif defined(__GNUC__)
#define NO_FMA_BEGIN
#define NO_FMA_FN __attribute__((optimize("fp-contract=off")))
#else
#define NO_FMA_BEGIN
#define NO_FMA_FN
#endif

/* propagate a failing status code (needs a local `int rc`) */
#define TRY(x)                                                                                   \
    do {                                                                                         \
        if ((rc = (x)) != 0) return rc;                                                          \
    } while (0)

static void *xcalloc(size_t n, size_t size) {
    if (n == 0 || size == 0) return calloc(1, 1);
    if (n > SIZE_MAX / size) return NULL;
    return calloc(n, size);
}

/* Zeroed memory aligned to 64 bytes (a cache line, a full vector); free with aligned_free.
 * The pointer calloc returned is kept just below the aligned block. */
static void *aligned_calloc(size_t n, size_t size) {
    if (size && n > (SIZE_MAX - 128) / size) return NULL;
    unsigned char *raw = calloc(n * size + 64 + sizeof(void *), 1);
    if (!raw) return NULL;
    uintptr_t a = ((uintptr_t)(raw + sizeof(void *)) + 63) & ~(uintptr_t)63;
    memcpy((unsigned char *)a - sizeof(void *), &raw, sizeof(void *));
    return (void *)a;
}

/* The same, not zeroed: for buffers every value of which is written before it is read
 * (the training tape: a few MB per sample, zeroed for nothing otherwise). OARD_POISON
 * (a test build) fills it with NaN bit patterns instead, so that a read before a write
 * shows up as NaN in the results. */
static void *aligned_malloc(size_t n, size_t size) {
    if (size && n > (SIZE_MAX - 128) / size) return NULL;
    unsigned char *raw = malloc(n * size + 64 + sizeof(void *));
    if (!raw) return NULL;
    uintptr_t a = ((uintptr_t)(raw + sizeof(void *)) + 63) & ~(uintptr_t)63;
    memcpy((unsigned char *)a - sizeof(void *), &raw, sizeof(void *));
#ifdef OARD_POISON
    memset((void *)a, 0xff, n * size);
#endif
    return (void *)a;
}

static void aligned_free(void *p) {
    if (!p) return;
    void *raw;
    memcpy(&raw, (unsigned char *)p - sizeof(void *), sizeof(void *));
    free(raw);
}

static size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

/* ------------------------------------------------------------------------------------ */
/* CRC-32 (IEEE 802.3 polynomial, reflected; the same as zlib's crc32)                   */

uint32_t oard_crc32(uint32_t crc, const void *data, size_t n) {
    static uint32_t table[256];
    static int ready = 0; /* benign race: every thread writes identical values */
    if (!ready) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
        ready = 1;
    }
    const unsigned char *p = (const unsigned char *)data;
    crc = ~crc;
    for (size_t i = 0; i < n; i++) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

/* ------------------------------------------------------------------------------------ */
/* Weights file (format: docs/weights_format.md)                                          */

#define WFILE_MAGIC "OARDIFF"
#define WFILE_VERSION 1u
#define WFILE_HEADER 64

typedef struct {
    char name[160];
    int is_f64;
    uint64_t offset, nbytes;
    int ndim;
    int64_t dims[4];
    int used;
    /* where the loader put it: first value in the parameter arena, and for a transposed
     * weight (a Linear's, stored (in, ld)) the row length ld; 0 when kept in file order */
    size_t arena_off;
    int ld;
} wtensor;

typedef struct {
    const char *path;
    unsigned char *buf; /* whole file */
    size_t size;
    uint64_t data_offset;
    char *meta;  /* NUL-terminated copy of the metadata text */
    char **keys, **vals;
    int n_meta;
    wtensor *t;
    int n_t;
} wfile;

static uint32_t rd_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd_u64(const unsigned char *p) {
    return (uint64_t)rd_u32(p) | (uint64_t)rd_u32(p + 4) << 32;
}

static void wfile_free(wfile *w) {
    free(w->buf);
    free(w->meta);
    free(w->keys);
    free(w->vals);
    free(w->t);
    memset(w, 0, sizeof(*w));
}

static const char *wfile_get(const wfile *w, const char *key) {
    for (int i = 0; i < w->n_meta; i++)
        if (strcmp(w->keys[i], key) == 0) return w->vals[i];
    return NULL;
}

/* Parse "tensor <name> <dtype> <offset> <nbytes> <ndim> <d0> ..." */
static int parse_tensor_line(const wfile *w, const char *line, wtensor *t, char *err) {
    char dtype[8];
    int pos = 0;
    unsigned long long off, nb;
    memset(t, 0, sizeof(*t));
    if (sscanf(line, "%159s %7s %llu %llu %d%n", t->name, dtype, &off, &nb, &t->ndim, &pos) != 5 ||
        t->ndim < 0 || t->ndim > 4)
        return fail(err, OARD_ERR_FORMAT, "%s: malformed tensor entry '%.80s'", w->path, line);
    if (strcmp(dtype, "f32") == 0) t->is_f64 = 0;
    else if (strcmp(dtype, "f64") == 0) t->is_f64 = 1;
    else return fail(err, OARD_ERR_FORMAT, "%s: tensor %s has unsupported dtype '%s'", w->path, t->name, dtype);
    t->offset = off;
    t->nbytes = nb;
    const char *p = line + pos;
    uint64_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        char *end;
        long long v = strtoll(p, &end, 10);
        if (end == p || v < 0 || v > (1LL << 40))
            return fail(err, OARD_ERR_FORMAT, "%s: tensor %s has a malformed shape", w->path, t->name);
        t->dims[d] = v;
        /* a product past 2^64 would wrap and could match a small byte size */
        if (v && numel > UINT64_MAX / 8 / (uint64_t)v)
            return fail(err, OARD_ERR_FORMAT, "%s: tensor %s has a malformed shape", w->path, t->name);
        numel *= (uint64_t)v;
        p = end;
    }
    if (numel * (t->is_f64 ? 8u : 4u) != nb)
        return fail(err, OARD_ERR_FORMAT, "%s: tensor %s: byte size %llu does not match its shape", w->path,
                    t->name, nb);
    if (off % 64 != 0)
        return fail(err, OARD_ERR_FORMAT, "%s: tensor %s is not 64-byte aligned", w->path, t->name);
    return OARD_OK;
}

/* A weights file or a checkpoint (noun, for messages), read whole: both formats start
 * with an 8-byte magic and keep the file size at byte 48. The file is opened without
 * blocking (a FIFO would wait for a writer), must be a regular file, and its first 64
 * bytes are checked before anything as large as the file is allocated. One byte more is
 * allocated than the file holds (*size bytes). */
static int read_binary_file(const char *path, const char *noun, const char *magic, unsigned char **buf, size_t *size,
                            char *err) {
    *buf = NULL; *size = 0;
    unsigned char h[64];
    size_t got = 0;
    uint64_t fsize = 0;
#if defined(__unix__) || defined(__APPLE__)
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0) return fail(err, OARD_ERR_IO, "%s: cannot open %s: %s", path, noun, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return fail(err, OARD_ERR_IO, "%s: cannot read: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        if (S_ISDIR(st.st_mode)) return fail(err, OARD_ERR_IO, "%s: cannot read: %s", path, strerror(EISDIR));
        return fail(err, OARD_ERR_IO, "%s: not a regular file (a %s is expected)", path, noun);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        return fail(err, OARD_ERR_IO, "%s: cannot read: %s", path, strerror(errno));
    }
    fsize = (uint64_t)st.st_size;
#else
    FILE *f = fopen(path, "rb");
    if (!f) return fail(err, OARD_ERR_IO, "%s: cannot open %s: %s", path, noun, strerror(errno));
    long sz = -1;
    if (fseek(f, 0, SEEK_END) == 0) sz = ftell(f);
    if (sz < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return fail(err, OARD_ERR_IO, "%s: cannot read: %s", path, strerror(errno));
    }
    fsize = (uint64_t)sz;
#endif
    got = fread(h, 1, sizeof(h), f);
    int rc = OARD_OK;
    if (got < sizeof(h) && ferror(f)) rc = fail(err, OARD_ERR_IO, "%s: cannot read: %s", path, strerror(errno));
    else if (got < sizeof(h) || memcmp(h, magic, 8) != 0)
        rc = fail(err, OARD_ERR_FORMAT, "%s: not an oa_reactdiff %s (bad magic)", path, noun);
    else if (rd_u64(h + 48) != fsize)
        rc = fail(err, OARD_ERR_FORMAT, "%s: truncated or padded: header says %llu bytes, file has %llu", path,
                  (unsigned long long)rd_u64(h + 48), (unsigned long long)fsize);
    else if (fsize >= SIZE_MAX || !(*buf = malloc((size_t)fsize + 1)))
        rc = fail(err, OARD_ERR_NOMEM, "%s: cannot allocate %llu bytes", path, (unsigned long long)fsize);
    if (!rc) {
        memcpy(*buf, h, sizeof(h));
        got = sizeof(h) + fread(*buf + sizeof(h), 1, (size_t)fsize - sizeof(h), f);
        if (got != fsize || getc(f) != EOF) /* changed while being read */
            rc = fail(err, OARD_ERR_IO, "%s: cannot read: %s", path, ferror(f) ? strerror(errno) : "the file changed size");
    }
    fclose(f);
    if (rc) { free(*buf); *buf = NULL; }
    else *size = (size_t)fsize;
    return rc;
}

/* Reads the whole file into w->buf; wfile_parse checks and indexes it. */
static int wfile_read(wfile *w, const char *path, char *err) {
    memset(w, 0, sizeof(*w));
    w->path = path;
    return read_binary_file(path, "weights file", WFILE_MAGIC, &w->buf, &w->size, err);
}

/* The image in w->buf (w->size bytes; from a file, or built in memory), named w->path in
 * messages: header, checksum, metadata and tensor directory. */
static int wfile_parse(wfile *w, char *err) {
    const char *path = w->path;
    const unsigned char *b = w->buf;
    if (w->size < WFILE_HEADER || memcmp(b, WFILE_MAGIC, 8) != 0)
        return fail(err, OARD_ERR_FORMAT, "%s: not an oa_reactdiff weights file (bad magic)", path);
    uint32_t version = rd_u32(b + 8);
    if (version != WFILE_VERSION)
        return fail(err, OARD_ERR_FORMAT, "%s: weights format version %u, this build reads version %u", path,
                    version, WFILE_VERSION);
    uint64_t meta_off = rd_u64(b + 16), meta_size = rd_u64(b + 24);
    w->data_offset = rd_u64(b + 32);
    uint64_t data_size = rd_u64(b + 40), file_size = rd_u64(b + 48);
    uint32_t crc = rd_u32(b + 56), n_tensors = rd_u32(b + 60);
    if (file_size != w->size)
        return fail(err, OARD_ERR_FORMAT, "%s: truncated or padded: header says %llu bytes, file has %zu", path,
                    (unsigned long long)file_size, w->size);
    if (meta_off != WFILE_HEADER || meta_size > file_size || meta_off + meta_size > w->data_offset ||
        w->data_offset % 64 != 0 || w->data_offset > file_size || data_size != file_size - w->data_offset)
        return fail(err, OARD_ERR_FORMAT, "%s: inconsistent header offsets", path);
    if (n_tensors > meta_size / 16) /* a tensor line is at least 16 bytes: refuse before allocating */
        return fail(err, OARD_ERR_FORMAT, "%s: header announces %u tensors, more than its %llu bytes of metadata can list",
                    path, n_tensors, (unsigned long long)meta_size);
    uint32_t c = oard_crc32(0, b, 56);
    c = oard_crc32(c, b + 60, w->size - 60);
    if (c != crc)
        return fail(err, OARD_ERR_FORMAT, "%s: checksum mismatch (file corrupted): stored %08x, computed %08x",
                    path, crc, c);

    /* metadata: key value lines */
    w->meta = malloc(meta_size + 1);
    if (!w->meta) return fail(err, OARD_ERR_NOMEM, "%s: out of memory", path);
    memcpy(w->meta, b + meta_off, meta_size);
    w->meta[meta_size] = 0;
    int n_lines = 1;
    for (uint64_t i = 0; i < meta_size; i++) n_lines += w->meta[i] == '\n';
    w->keys = xcalloc((size_t)n_lines, sizeof(char *));
    w->vals = xcalloc((size_t)n_lines, sizeof(char *));
    w->t = xcalloc(n_tensors ? n_tensors : 1, sizeof(wtensor));
    if (!w->keys || !w->vals || !w->t) return fail(err, OARD_ERR_NOMEM, "%s: out of memory", path);
    char *line = w->meta;
    while (line && *line) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        if (*line && *line != '#') {
            char *sp = strchr(line, ' ');
            if (!sp) return fail(err, OARD_ERR_FORMAT, "%s: malformed metadata line '%.60s'", path, line);
            *sp = 0;
            if (strcmp(line, "tensor") == 0) {
                if ((uint32_t)w->n_t >= n_tensors)
                    return fail(err, OARD_ERR_FORMAT, "%s: more tensor entries than the header's %u", path,
                                n_tensors);
                wtensor *t = &w->t[w->n_t];
                int rc = parse_tensor_line(w, sp + 1, t, err);
                if (rc) return rc;
                if (t->offset > data_size || t->nbytes > data_size - t->offset) /* no wrap past 2^64 */
                    return fail(err, OARD_ERR_FORMAT, "%s: tensor %s lies outside the data section", path, t->name);
                for (int k = 0; k < w->n_t; k++)
                    if (strcmp(w->t[k].name, t->name) == 0)
                        return fail(err, OARD_ERR_FORMAT, "%s: tensor %s listed twice", path, t->name);
                w->n_t++;
            } else {
                if (wfile_get(w, line))
                    return fail(err, OARD_ERR_FORMAT, "%s: metadata key '%s' repeated", path, line);
                w->keys[w->n_meta] = line;
                w->vals[w->n_meta] = sp + 1;
                w->n_meta++;
            }
        }
        line = nl ? nl + 1 : NULL;
    }
    if ((uint32_t)w->n_t != n_tensors)
        return fail(err, OARD_ERR_FORMAT, "%s: header announces %u tensors, directory lists %d", path, n_tensors,
                    w->n_t);
    return OARD_OK;
}

/* ---- typed metadata getters ---- */

static int meta_str(const wfile *w, const char *key, const char **out, char *err) {
    *out = wfile_get(w, key);
    if (!*out) return fail(err, OARD_ERR_FORMAT, "%s: metadata key '%s' is missing", w->path, key);
    return OARD_OK;
}

static int meta_int(const wfile *w, const char *key, int lo, int hi, int *out, char *err) {
    const char *v;
    int rc = meta_str(w, key, &v, err);
    if (rc) return rc;
    char *end;
    long x = strtol(v, &end, 10);
    if (end == v || *end || x < lo || x > hi)
        return fail(err, OARD_ERR_FORMAT, "%s: metadata '%s' = '%s' is not an integer in [%d, %d]", w->path, key,
                    v, lo, hi);
    *out = (int)x;
    return OARD_OK;
}

static int meta_double(const wfile *w, const char *key, double *out, char *err) {
    const char *v;
    int rc = meta_str(w, key, &v, err);
    if (rc) return rc;
    char *end;
    double x = strtod(v, &end);
    if (end == v || *end || !isfinite(x))
        return fail(err, OARD_ERR_FORMAT, "%s: metadata '%s' = '%s' is not a number", w->path, key, v);
    *out = x;
    return OARD_OK;
}

/* comma-separated list of n numbers */
static int meta_list(const wfile *w, const char *key, int n, double *out, char *err) {
    const char *v;
    int rc = meta_str(w, key, &v, err);
    if (rc) return rc;
    const char *p = v;
    for (int i = 0; i < n; i++) {
        char *end;
        out[i] = strtod(p, &end);
        if (end == p || !isfinite(out[i]) || (i < n - 1 ? *end != ',' : *end != 0))
            return fail(err, OARD_ERR_FORMAT, "%s: metadata '%s' = '%s' is not a list of %d numbers", w->path, key,
                        v, n);
        p = end + 1;
    }
    return OARD_OK;
}

/* ------------------------------------------------------------------------------------ */
/* Model parameters                                                                        */

/* nn.Linear(in, out). The weight is stored transposed, (in, ldw): row i holds the weights
 * of input i for every output, so a block of outputs is a sum of scaled weight rows (the
 * matmul kernel's inner loop). ldw is out rounded up to a whole column tile (zero
 * padding), so that every tile of the kernel is full (a narrower last tile computes at
 * half speed); layers with fewer outputs than one vector are not padded. */
typedef struct {
    const real *wt; /* (in, ldw) */
    const real *b;  /* (out) or NULL */
    int in, out, ldw;
} Linear;

/* upstream model/core.py MLP: Linear layers with SiLU after each, the last one optional */
typedef struct {
    Linear l[3];
    int n;
    int last_act;
} MLP;

typedef struct { /* leftnet.py GCLMessage */
    MLP edge_mlp;       /* (2H + 3H + R) -> H -> H, SiLU after both */
    MLP node_mlp;       /* 2H -> H -> H, legacy: no SiLU after the last */
    MLP edge_out_trans; /* H -> 3H + R, SiLU */
    MLP att_mlp;        /* H -> 1, SiLU */
    const real *ln_w, *ln_b; /* x_layernorm (H) */
} GCLParams;

typedef struct { /* leftnet.py EquiMessage */
    Linear dir_proj0, dir_proj2; /* (3H + R) -> 3H -> 3H */
    Linear x_proj0, x_proj2;     /* H -> H -> 3H, no bias */
    Linear rbf_proj;             /* R -> 3H, no bias */
    const real *ln_w, *ln_b;     /* x_layernorm (H) */
} MsgParams;

typedef struct { /* leftnet.py EquiUpdate */
    Linear vec_proj;               /* H -> 2H, no bias */
    Linear xvec_proj0, xvec_proj2; /* 2H -> H -> 3H, no bias */
    Linear lin3[3];                /* 3 -> 48 -> 8 -> 1 */
} UpdParams;

typedef struct { /* leftnet.py GatedEquivariantBlock */
    Linear vec1_proj, vec2_proj; /* hidden -> hidden, hidden -> out; no bias */
    Linear update_net0, update_net2; /* 2 hidden -> hidden -> 2 out */
    int hidden, out;
} GatedParams;

#define MAX_LAYERS 32

typedef struct { /* leftnet.py LEFTNet */
    Linear embedding, embedding_out;
    const real *rbf_means, *rbf_betas; /* radial_emb buffers (R) */
    Linear neighbor_emb;               /* NeighborEmb.embedding */
    Linear s2v_lin1;                   /* CFConvS2V.lin1[0] */
    Linear radial_lin0, radial_lin2;
    Linear lin3[2];          /* 3 -> H/4 -> 1 */
    Linear pos_exp0, pos_exp1; /* 3 -> H/2 -> H, no bias */
    Linear dyn0, dyn2;       /* pos_grad: dynamic_mlp_modules H -> H/2 -> 3 */
    GCLParams gcl[MAX_LAYERS];
    MsgParams msg[MAX_LAYERS];
    UpdParams upd[MAX_LAYERS];
    GatedParams out[2];
    int n_out;
} LEFTNetParams;

struct oard_model {
    oard_config cfg;
    wfile file;     /* kept for oard_model_meta */
    real *params;   /* one allocation holding every tensor */
    size_t n_params, params_used;
    LEFTNetParams net;
    MLP enc[OARD_MAX_FRAG], dec[OARD_MAX_FRAG];
    MLP readout_mlp, readout_gmlp; /* confidence GatedMLP */
};

const oard_config *oard_model_config(const oard_model *m) { return &m->cfg; }
const char *oard_model_meta(const oard_model *m, const char *key) { return wfile_get(&m->file, key); }

typedef struct {
    oard_model *m;
    const char *prefix; /* "ddpm.dynamics." or "confidence." */
    char *err;
} loader;

/* Find a tensor by its upstream name, check its shape, copy it (converted to the build's
 * precision, transposed when asked, into rows of ld >= dims[0] values with zero padding)
 * into the parameter block. */
static int take(loader *L, const real **out, int transpose, int ld, int ndim, const int64_t *dims, const char *fmt, ...) {
    char name[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof(name), fmt, ap);
    va_end(ap);
    wfile *w = &L->m->file;
    wtensor *t = NULL;
    for (int i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0) t = &w->t[i];
    if (!t) return fail(L->err, OARD_ERR_MODEL, "%s: missing tensor %s", w->path, name);
    int ok = t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++) ok = t->dims[d] == dims[d];
    if (!ok) {
        char want[64] = "", got[64] = "";
        for (int d = 0; d < ndim; d++)
            snprintf(want + strlen(want), sizeof(want) - strlen(want), "%s%lld", d ? "x" : "", (long long)dims[d]);
        for (int d = 0; d < t->ndim; d++)
            snprintf(got + strlen(got), sizeof(got) - strlen(got), "%s%lld", d ? "x" : "", (long long)t->dims[d]);
        return fail(L->err, OARD_ERR_MODEL, "%s: tensor %s has shape %s, the configuration needs %s", w->path, name,
                    got, want);
    }
    size_t n = (size_t)(t->nbytes / (t->is_f64 ? 8 : 4));
    size_t rows = ndim == 2 ? (size_t)dims[0] : 1, cols = n / (rows ? rows : 1);
    size_t ldt = transpose ? (size_t)ld : rows, n_alloc = transpose ? cols * ldt : n;
    if (L->m->params_used + n_alloc > L->m->n_params)
        return fail(L->err, OARD_ERR_MODEL, "%s: tensor %s used twice", w->path, name);
    real *dst = L->m->params + L->m->params_used;
    const unsigned char *src = w->buf + w->data_offset + t->offset;
    for (size_t i = 0; i < n; i++) {
        double v;
        if (t->is_f64) {
            memcpy(&v, src + 8 * i, 8);
        } else {
            float f;
            memcpy(&f, src + 4 * i, 4);
            v = f;
        }
        if (!isfinite(v))
            return fail(L->err, OARD_ERR_MODEL, "%s: tensor %s holds a non-finite value", w->path, name);
        size_t j = transpose ? (i % cols) * ldt + i / cols : i;
        dst[j] = (real)v;
    }
    t->arena_off = L->m->params_used;
    t->ld = transpose ? ld : 0;
    L->m->params_used += (n_alloc + PARAM_ALIGN - 1) / PARAM_ALIGN * PARAM_ALIGN; /* keeps tensors aligned */
    t->used = 1;
    *out = dst;
    return OARD_OK;
}

/* "<base>.weight" (out, in) and optionally "<base>.bias" (out) */
static int take_linear(loader *L, Linear *lin, int in, int out, int bias, const char *fmt, ...) {
    char base[180];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(base, sizeof(base), fmt, ap);
    va_end(ap);
    int64_t wd[2] = {out, in}, bd[1] = {out};
    lin->in = in;
    lin->out = out;
    lin->ldw = out < VW ? out : (out + TILE_N - 1) / TILE_N * TILE_N;
    lin->b = NULL;
    int rc = take(L, &lin->wt, 1, lin->ldw, 2, wd, "%s%s.weight", L->prefix, base);
    if (!rc && bias) rc = take(L, &lin->b, 0, 0, 1, bd, "%s%s.bias", L->prefix, base);
    return rc;
}

/* upstream core.py MLP: "<base>.mlp.<k>.linear" */
static int take_mlp(loader *L, MLP *mlp, int in, const int *outs, int n, int bias, int last_act, const char *base) {
    mlp->n = n;
    mlp->last_act = last_act;
    for (int k = 0; k < n; k++) {
        int rc = take_linear(L, &mlp->l[k], k ? outs[k - 1] : in, outs[k], bias, "%s.mlp.%d.linear", base, k);
        if (rc) return rc;
    }
    return OARD_OK;
}

static int take_vector(loader *L, const real **out, int n, const char *fmt, const char *base) {
    int64_t d[1] = {n};
    char name[200];
    snprintf(name, sizeof(name), fmt, base);
    return take(L, out, 0, 0, 1, d, "%s%s", L->prefix, name);
}

static int load_leftnet(loader *L, const oard_config *c) {
    LEFTNetParams *p = &L->m->net;
    int H = c->hidden_channels, R = c->num_radial, I = c->in_hidden_channels, rc = 0;
    char b[128];
    TRY(take_linear(L, &p->embedding, I, H, 1, "model.embedding"));
    TRY(take_linear(L, &p->embedding_out, H, I, 1, "model.embedding_out"));
    TRY(take_vector(L, &p->rbf_means, R, "%s.means", "model.radial_emb"));
    TRY(take_vector(L, &p->rbf_betas, R, "%s.betas", "model.radial_emb"));
    TRY(take_linear(L, &p->neighbor_emb, I, H, 1, "model.neighbor_emb.embedding"));
    TRY(take_linear(L, &p->s2v_lin1, H, H, 1, "model.s2v.lin1.0"));
    TRY(take_linear(L, &p->radial_lin0, R, H, 1, "model.radial_lin.0"));
    TRY(take_linear(L, &p->radial_lin2, H, H, 1, "model.radial_lin.2"));
    TRY(take_linear(L, &p->lin3[0], 3, H / 4, 1, "model.lin3.0"));
    TRY(take_linear(L, &p->lin3[1], H / 4, 1, 1, "model.lin3.2"));
    TRY(take_linear(L, &p->pos_exp0, 3, H / 2, 0, "model.pos_expansion.mlp.0.linear"));
    TRY(take_linear(L, &p->pos_exp1, H / 2, H, 0, "model.pos_expansion.mlp.1.linear"));
    if (c->legacy) { /* built but never used in forward: loaded so the file is fully accounted for */
        Linear unused;
        TRY(take_linear(L, &unused, R, H / 2, 0, "model.distance_embedding.mlp.0.linear"));
        TRY(take_linear(L, &unused, H / 2, H, 0, "model.distance_embedding.mlp.1.linear"));
    }
    if (c->pos_grad) {
        TRY(take_linear(L, &p->dyn0, H, H / 2, 1, "model.dynamic_mlp_modules.0"));
        TRY(take_linear(L, &p->dyn2, H / 2, 3, 1, "model.dynamic_mlp_modules.2"));
    }
    for (int i = 0; i < c->num_layers; i++) {
        GCLParams *g = &p->gcl[i];
        int e_out[2] = {H, H}, n_out[2] = {H, H}, t_out[1] = {3 * H + R}, a_out[1] = {1};
        snprintf(b, sizeof(b), "model.gcl_layers.%d.edge_mlp", i);
        TRY(take_mlp(L, &g->edge_mlp, 5 * H + R, e_out, 2, 1, 1, b));
        snprintf(b, sizeof(b), "model.gcl_layers.%d.node_mlp", i);
        TRY(take_mlp(L, &g->node_mlp, 2 * H, n_out, 2, 1, !c->legacy, b));
        snprintf(b, sizeof(b), "model.gcl_layers.%d.edge_out_trans", i);
        TRY(take_mlp(L, &g->edge_out_trans, H, t_out, 1, 1, 1, b));
        snprintf(b, sizeof(b), "model.gcl_layers.%d.att_mlp", i);
        TRY(take_mlp(L, &g->att_mlp, H, a_out, 1, 1, 1, b));
        snprintf(b, sizeof(b), "model.gcl_layers.%d.x_layernorm", i);
        TRY(take_vector(L, &g->ln_w, H, "%s.weight", b));
        TRY(take_vector(L, &g->ln_b, H, "%s.bias", b));

        MsgParams *m = &p->msg[i];
        TRY(take_linear(L, &m->dir_proj0, 3 * H + R, 3 * H, 1, "model.message_layers.%d.dir_proj.0", i));
        TRY(take_linear(L, &m->dir_proj2, 3 * H, 3 * H, 1, "model.message_layers.%d.dir_proj.2", i));
        TRY(take_linear(L, &m->x_proj0, H, H, 0, "model.message_layers.%d.x_proj.0", i));
        TRY(take_linear(L, &m->x_proj2, H, 3 * H, 0, "model.message_layers.%d.x_proj.2", i));
        TRY(take_linear(L, &m->rbf_proj, R, 3 * H, 0, "model.message_layers.%d.rbf_proj", i));
        snprintf(b, sizeof(b), "model.message_layers.%d.x_layernorm", i);
        TRY(take_vector(L, &m->ln_w, H, "%s.weight", b));
        TRY(take_vector(L, &m->ln_b, H, "%s.bias", b));

        UpdParams *u = &p->upd[i];
        TRY(take_linear(L, &u->vec_proj, H, 2 * H, 0, "model.update_layers.%d.vec_proj", i));
        TRY(take_linear(L, &u->xvec_proj0, 2 * H, H, 0, "model.update_layers.%d.xvec_proj.0", i));
        TRY(take_linear(L, &u->xvec_proj2, H, 3 * H, 0, "model.update_layers.%d.xvec_proj.2", i));
        TRY(take_linear(L, &u->lin3[0], 3, 48, 1, "model.update_layers.%d.lin3.0", i));
        TRY(take_linear(L, &u->lin3[1], 48, 8, 1, "model.update_layers.%d.lin3.2", i));
        TRY(take_linear(L, &u->lin3[2], 8, 1, 1, "model.update_layers.%d.lin3.4", i));
    }
    { /* last_layer: built, never used in forward */
        Linear unused;
        TRY(take_linear(L, &unused, H, 1, 1, "model.last_layer"));
    }
    p->n_out = c->single_layer_output ? 1 : 2;
    for (int k = 0; k < p->n_out; k++) {
        GatedParams *g = &p->out[k];
        g->hidden = (k == 0) ? H : H / 2;
        g->out = (p->n_out == 1 || k == 1) ? 1 : H / 2;
        TRY(take_linear(L, &g->vec1_proj, g->hidden, g->hidden, 0, "model.out_pos.output_network.%d.vec1_proj", k));
        TRY(take_linear(L, &g->vec2_proj, g->hidden, g->out, 0, "model.out_pos.output_network.%d.vec2_proj", k));
        TRY(take_linear(L, &g->update_net0, 2 * g->hidden, g->hidden, 1, "model.out_pos.output_network.%d.update_net.0", k));
        TRY(take_linear(L, &g->update_net2, g->hidden, 2 * g->out, 1, "model.out_pos.output_network.%d.update_net.2", k));
    }
    return OARD_OK;
}

/* A schedule name the samplers cannot build is the file's fault, found when it is loaded:
 * the name is tried on a one-step table. */
static int check_schedule_name(const wfile *w, const char *key, const char *name, char *err) {
    oard_schedule s;
    char why[OARD_ERRLEN];
    if (oard_schedule_init(&s, name, 1, 1e-5, why) == OARD_OK) {
        oard_schedule_free(&s);
        return OARD_OK;
    }
    return fail(err, OARD_ERR_FORMAT, "%s: metadata '%s': %s", w->path, key, why);
}

/* SBSchedule's arguments the bridge supports: even T in 2..1e6, positive bounded numbers
 * (the loader and oard_sb_schedule_init both ask) */
static int sb_params_ok(int T, double beta_max, double power, double inv_power) {
    return T >= 2 && T % 2 == 0 && T <= 1000000 && beta_max > 0 && beta_max < 1e6 && power > 0 && power < 100 &&
           inv_power > 0 && inv_power < 100;
}

static int parse_config(const wfile *w, oard_config *c, char *err) {
    const char *s;
    int rc = 0;
    memset(c, 0, sizeof(*c));
    TRY(meta_str(w, "kind", &s, err));
    if (strcmp(s, "denoiser") == 0) c->kind = OARD_KIND_DENOISER;
    else if (strcmp(s, "confidence") == 0) c->kind = OARD_KIND_CONFIDENCE;
    else return fail(err, OARD_ERR_FORMAT, "%s: unknown model kind '%s'", w->path, s);
    if ((uint32_t)c->kind != rd_u32(w->buf + 12))
        return fail(err, OARD_ERR_FORMAT, "%s: header kind and metadata kind disagree", w->path);
    TRY(meta_int(w, "num_layers", 1, MAX_LAYERS, &c->num_layers, err));
    TRY(meta_int(w, "hidden_channels", 4, 8192, &c->hidden_channels, err));
    TRY(meta_int(w, "num_radial", 1, 8192, &c->num_radial, err));
    TRY(meta_int(w, "in_hidden_channels", 1, 8192, &c->in_hidden_channels, err));
    TRY(meta_double(w, "cutoff", &c->cutoff, err));
    if (!(c->cutoff > 0)) return fail(err, OARD_ERR_FORMAT, "%s: cutoff must be positive", w->path);
    TRY(meta_int(w, "reflect_equiv", 0, 1, &c->reflect_equiv, err));
    TRY(meta_int(w, "legacy", 0, 1, &c->legacy, err));
    TRY(meta_int(w, "update", 0, 1, &c->update, err));
    TRY(meta_int(w, "pos_grad", 0, 1, &c->pos_grad, err));
    TRY(meta_int(w, "single_layer_output", 0, 1, &c->single_layer_output, err));
    TRY(meta_int(w, "object_aware", 0, 1, &c->object_aware, err));
    TRY(meta_int(w, "for_conf", 0, 1, &c->for_conf, err));
    TRY(meta_int(w, "n_fragments", 3, 3, &c->n_fragments, err));
    TRY(meta_int(w, "pos_dim", 3, 3, &c->pos_dim, err));
    TRY(meta_int(w, "condition_nf", 0, 64, &c->condition_nf, err));
    TRY(meta_int(w, "condition_time", 0, 1, &c->condition_time, err));
    TRY(meta_str(w, "act_fn", &s, err));
    if (strcmp(s, "swish") != 0 && strcmp(s, "silu") != 0)
        return fail(err, OARD_ERR_MODEL, "%s: activation '%s' not supported (only swish)", w->path, s);
    double nfs[OARD_MAX_FRAG];
    TRY(meta_list(w, "node_nfs", 3, nfs, err));
    for (int f = 0; f < 3; f++) { /* checked before the conversion: out of int range it is undefined */
        if (!(nfs[f] >= 1 && nfs[f] <= 1024 && nfs[f] == floor(nfs[f])))
            return fail(err, OARD_ERR_FORMAT, "%s: metadata 'node_nfs' = '%s' is not a list of 3 integers in [1, 1024]",
                        w->path, wfile_get(w, "node_nfs"));
        c->node_nfs[f] = (int)nfs[f];
    }
    /* element table "H:1,C:6,..." */
    TRY(meta_str(w, "elements", &s, err));
    for (const char *p = s; *p;) {
        if (c->n_elements >= OARD_MAX_ELEM) return fail(err, OARD_ERR_FORMAT, "%s: too many elements", w->path);
        int k = 0;
        while (isalpha((unsigned char)*p) && k < 3) c->element_sym[c->n_elements][k++] = *p++;
        c->element_sym[c->n_elements][k] = 0;
        char *end;
        long z = (*p == ':') ? strtol(p + 1, &end, 10) : -1;
        if (k == 0 || z < 1 || z > 118 || (*end && *end != ','))
            return fail(err, OARD_ERR_FORMAT, "%s: malformed element table '%s'", w->path, s);
        c->element_z[c->n_elements++] = (int)z;
        p = *end ? end + 1 : end;
    }
    int n_feat = c->n_elements + 1; /* one-hot + Z */
    for (int f = 0; f < 3; f++)
        if (c->node_nfs[f] != c->pos_dim + n_feat)
            return fail(err, OARD_ERR_MODEL, "%s: node_nfs %d does not fit %d elements + Z + positions", w->path,
                        c->node_nfs[f], c->n_elements);
    if (c->in_hidden_channels - c->condition_time - c->condition_nf <= 0)
        return fail(err, OARD_ERR_MODEL, "%s: in_hidden_channels too small for the condition channels", w->path);
    if (c->kind == OARD_KIND_DENOISER) {
        s = wfile_get(w, "objective"); /* absent in files written before React-OT: diffusion */
        if (!s || !strcmp(s, "diffusion")) c->objective = OARD_OBJECTIVE_DIFFUSION;
        else if (!strcmp(s, "bridge")) c->objective = OARD_OBJECTIVE_BRIDGE;
        else return fail(err, OARD_ERR_FORMAT, "%s: unknown objective '%.40s' (diffusion or bridge)", w->path, s);
        TRY(meta_int(w, "pos_only", 0, 1, &c->pos_only, err));
        TRY(meta_list(w, "norm_values", 3, c->norm_values, err));
        TRY(meta_list(w, "norm_biases", 3, c->norm_biases, err));
        if (c->objective == OARD_OBJECTIVE_BRIDGE) { /* SBSchedule's arguments */
            TRY(meta_int(w, "sb_timesteps", 2, 1000000, &c->sb_timesteps, err));
            TRY(meta_double(w, "sb_beta_max", &c->sb_beta_max, err));
            TRY(meta_double(w, "sb_power", &c->sb_power, err));
            TRY(meta_double(w, "sb_inv_power", &c->sb_inv_power, err));
            if (!sb_params_ok(c->sb_timesteps, c->sb_beta_max, c->sb_power, c->sb_inv_power))
                return fail(err, OARD_ERR_FORMAT, "%s: bridge schedule sb_timesteps %d, sb_beta_max %g, sb_power %g, sb_inv_power %g "
                            "(even timesteps and positive values needed)", w->path, c->sb_timesteps, c->sb_beta_max,
                            c->sb_power, c->sb_inv_power);
            if (!wfile_get(w, "sampling_schedule")) goto provenance; /* no diffusion schedule: converted React-OT */
        }
        TRY(meta_str(w, "sampling_schedule", &s, err));
        snprintf(c->sampling_schedule, sizeof(c->sampling_schedule), "%s", s);
        TRY(meta_int(w, "sampling_timesteps", 1, 1000000, &c->sampling_timesteps, err));
        TRY(meta_double(w, "sampling_precision", &c->sampling_precision, err));
        TRY(meta_str(w, "training_schedule", &s, err));
        snprintf(c->training_schedule, sizeof(c->training_schedule), "%s", s);
        TRY(meta_int(w, "training_timesteps", 1, 1000000, &c->training_timesteps, err));
        TRY(meta_double(w, "training_precision", &c->training_precision, err));
        TRY(meta_list(w, "loss_scales", 3, c->loss_scales, err));
        TRY(check_schedule_name(w, "sampling_schedule", c->sampling_schedule, err));
        TRY(check_schedule_name(w, "training_schedule", c->training_schedule, err));
        if (c->for_conf) return fail(err, OARD_ERR_MODEL, "%s: a denoiser cannot have for_conf=1", w->path);
    } else if (!c->for_conf) {
        return fail(err, OARD_ERR_MODEL, "%s: a confidence model needs for_conf=1", w->path);
    }
provenance:
    if (c->for_conf && c->kind == OARD_KIND_DENOISER) return fail(err, OARD_ERR_MODEL, "%s: a denoiser cannot have for_conf=1", w->path);
    TRY(meta_str(w, "source_file", &s, err));
    snprintf(c->source_file, sizeof(c->source_file), "%s", s);
    TRY(meta_str(w, "source_sha256", &s, err));
    snprintf(c->source_sha256, sizeof(c->source_sha256), "%s", s);
    TRY(meta_int(w, "trained", 0, 1, &c->trained, err));
    TRY(meta_str(w, "description", &s, err));
    snprintf(c->description, sizeof(c->description), "%s", s);
    c->crc32 = rd_u32(w->buf + 56);
    return OARD_OK;
}

/* The model of a read (not yet parsed) weights image in m->file; frees m on failure. */
static int model_from_image(oard_model *m, int expected_kind, oard_model **out, char *err) {
    const char *path = m->file.path;
    int rc = wfile_parse(&m->file, err);
    if (!rc) rc = parse_config(&m->file, &m->cfg, err);
    if (!rc && expected_kind && m->cfg.kind != expected_kind)
        rc = fail(err, OARD_ERR_MODEL, "%s: is a %s model, a %s model is needed here", path,
                  m->cfg.kind == OARD_KIND_DENOISER ? "denoiser" : "confidence",
                  expected_kind == OARD_KIND_DENOISER ? "denoiser" : "confidence");
    if (!rc) {
        /* room for every tensor, the column padding of transposed weights and alignment */
        for (int i = 0; i < m->file.n_t; i++) {
            const wtensor *t = &m->file.t[i];
            m->n_params += t->nbytes / (t->is_f64 ? 8 : 4) + PARAM_ALIGN;
            if (t->ndim == 2) m->n_params += (size_t)t->dims[1] * TILE_N;
        }
        m->params = aligned_calloc(m->n_params, sizeof(real));
        if (!m->params) rc = fail(err, OARD_ERR_NOMEM, "%s: cannot allocate %zu parameters", path, m->n_params);
    }
    if (!rc) {
        const oard_config *c = &m->cfg;
        loader L = {m, c->kind == OARD_KIND_DENOISER ? "ddpm.dynamics." : "confidence.", err};
        rc = load_leftnet(&L, c);
        int F = c->node_nfs[0] - c->pos_dim;                             /* 6 features */
        int E = c->in_hidden_channels - c->condition_time - c->condition_nf; /* embedding width */
        for (int f = 0; !rc && f < 3; f++) { /* dynamics/_base.py build_encoders_decoders */
            char b[64];
            int eo[2] = {2 * F, E}, dout[2] = {2 * F, F};
            snprintf(b, sizeof(b), "encoders.%d", f);
            rc = take_mlp(&L, &m->enc[f], F, eo, 2, 1, 0, b);
            snprintf(b, sizeof(b), "decoders.%d", f);
            if (!rc) rc = take_mlp(&L, &m->dec[f], E, dout, 2, 1, 0, b);
        }
        if (!rc && c->kind == OARD_KIND_CONFIDENCE) { /* confidence.py GatedMLP readout */
            int H = c->hidden_channels, ro[3] = {H, H, 1};
            rc = take_mlp(&L, &m->readout_mlp, H, ro, 3, 1, 0, "readout.mlp");
            if (!rc) rc = take_mlp(&L, &m->readout_gmlp, H, ro, 3, 1, 0, "readout.gmlp");
        }
        if (!rc && c->kind == OARD_KIND_DENOISER && c->sampling_timesteps > 0) {
            /* the schedules are recomputed from their names; the stored tables are checked
             * against that in the tests (tests/test_schedules), here only their size. A
             * bridge model has none, or unused ones from the diffusion model it started from. */
            const real *unused;
            L.prefix = "";
            rc = take_vector(&L, &unused, c->training_timesteps + 1, "%s", "ddpm.schedule.gamma_module.gamma");
            if (!rc) rc = take_vector(&L, &unused, c->sampling_timesteps + 1, "%s", "sampling_schedule.gamma_module.gamma");
        }
        for (int i = 0; !rc && i < m->file.n_t; i++)
            if (!m->file.t[i].used)
                rc = fail(err, OARD_ERR_MODEL, "%s: unexpected tensor %s (not part of this configuration)", path,
                          m->file.t[i].name);
    }
    if (rc) {
        oard_model_free(m);
        return rc;
    }
    /* parameters as upstream counts them: every tensor but the gamma tables and the RBF buffers */
    for (int i = 0; i < m->file.n_t; i++) {
        const char *nm = m->file.t[i].name;
        if (!strstr(nm, "gamma_module.gamma") && !strstr(nm, "radial_emb.means") && !strstr(nm, "radial_emb.betas"))
            m->cfg.n_params += m->file.t[i].nbytes / (m->file.t[i].is_f64 ? 8 : 4);
    }
    free(m->file.buf); /* tensors are copied out; keep only the metadata */
    m->file.buf = NULL;
    *out = m;
    return OARD_OK;
}

int oard_model_load(const char *path, int expected_kind, oard_model **out, char *err) {
    *out = NULL;
    oard_model *m = xcalloc(1, sizeof(*m));
    if (!m) return fail(err, OARD_ERR_NOMEM, "%s: out of memory", path);
    int rc = wfile_read(&m->file, path, err);
    if (rc) {
        oard_model_free(m);
        return rc;
    }
    return model_from_image(m, expected_kind, out, err);
}

/* The model of a weights image in memory (buf of size bytes, taken over: freed here);
 * name stands for the file in messages and must outlive the call only. */
static int model_load_image(const char *name, unsigned char *buf, size_t size, int expected_kind, oard_model **out,
                            char *err) {
    *out = NULL;
    oard_model *m = xcalloc(1, sizeof(*m));
    if (!m) {
        free(buf);
        return fail(err, OARD_ERR_NOMEM, "%s: out of memory", name);
    }
    m->file.path = name;
    m->file.buf = buf;
    m->file.size = size;
    return model_from_image(m, expected_kind, out, err);
}

void oard_model_free(oard_model *m) {
    if (!m) return;
    wfile_free(&m->file);
    aligned_free(m->params);
    free(m);
}

/* ---- the parameter arena and its tensor directory (oard_tensor) ---- */

size_t oard_param_size(const oard_model *m) { return m->params_used; }
oard_real *oard_param_data(oard_model *m) { return m->params; }
int oard_tensor_count(const oard_model *m) { return m->file.n_t; }

int oard_tensor_info(const oard_model *m, int i, oard_tensor *out) {
    if (!m || i < 0 || i >= m->file.n_t || !out) return OARD_ERR_ARG;
    const wtensor *t = &m->file.t[i];
    memset(out, 0, sizeof(*out));
    out->name = t->name;
    out->ndim = t->ndim;
    for (int d = 0; d < t->ndim; d++) out->dims[d] = t->dims[d];
    out->offset = t->arena_off;
    out->ld = t->ld;
    out->trainable = !strstr(t->name, "gamma_module.gamma") && !strstr(t->name, "radial_emb.means") &&
                     !strstr(t->name, "radial_emb.betas");
    return OARD_OK;
}

void oard_tensor_get(const oard_model *m, int i, const oard_real *arena, double *out) {
    const wtensor *t = &m->file.t[i];
    size_t n = (size_t)(t->nbytes / (t->is_f64 ? 8 : 4));
    const oard_real *a = arena + t->arena_off;
    if (t->ld) { /* (out, in) from the transposed (in, ld) */
        size_t rows = (size_t)t->dims[0], cols = n / rows;
        for (size_t r = 0; r < rows; r++)
            for (size_t k = 0; k < cols; k++) out[r * cols + k] = (double)a[k * (size_t)t->ld + r];
    } else {
        for (size_t k = 0; k < n; k++) out[k] = (double)a[k];
    }
}

/* ------------------------------------------------------------------------------------ */
/* Kernels                                                                                 */

#ifdef OARD_DOUBLE
#define REXP exp
#define RSQRT sqrt
#define RCOS cos
#define RFABS fabs
#else
#define REXP expf
#define RSQRT sqrtf
#define RCOS cosf
#define RFABS fabsf
#endif

/* SiLU's exponential. PyTorch's CPU SiLU computes x / (1 + exp(-x)) on vectors with Sleef's
 * expf (u10), which torch_expf reproduces bit for bit with explicit fmaf; where fmaf is a
 * single instruction (FAST_FMAF) its branch-free form silu_expf is both faster, as it
 * vectorises, and closer to upstream than libm's expf. Elsewhere (and in float64) libm. */
/* fmaf is one instruction: FP_FAST_FMAF (glibc, from the compiler) or x86's __FMA__ */
#if defined(FP_FAST_FMAF) || defined(__FMA__)
#define FAST_FMAF 1
#endif
#if defined(FP_FAST_FMA) || defined(__FMA__)
#define FAST_FMA 1
#endif

#if !defined(OARD_DOUBLE) && defined(FAST_FMAF)
#define SILU_SLEEF 1
#define SILU_EXP silu_expf
#else
#define SILU_EXP REXP
#endif
#if !defined(OARD_DOUBLE) && (defined(FAST_FMAF) || defined(OARD_DISPATCH))
static inline float silu_expf(float d);
#endif

/* a * b + c: one fused multiply-add where the target has it as an instruction (a rounding
 * step fewer: exact algebra), else a multiply and an add; never a slow libm call */
#if defined(OARD_DOUBLE) && defined(FAST_FMA)
#define MADD(a, b, c) fma(a, b, c)
#elif !defined(OARD_DOUBLE) && defined(FAST_FMAF)
#define MADD(a, b, c) fmaf(a, b, c)
#else
#define MADD(a, b, c) ((a) * (b) + (c))
#endif
#ifdef OARD_DOUBLE
#define RFMA fma
#else
#define RFMA fmaf
#endif

/* Unroll matmul's tile loops completely, so that acc is held in registers (without it GCC
 * vectorises the float64 tile across rows, through memory: ten times slower). */
#if defined(__GNUC__)
#define UNROLL_FULL _Pragma("GCC unroll 64")
#define ALWAYS_INLINE __attribute__((always_inline))
#else
#define UNROLL_FULL
#define ALWAYS_INLINE
#endif

/* ---- kernel code paths (see OARD_DISPATCH) ----
 * KP_BASE is the build's own target; with dispatch KP_AVX2 and KP_AVX512 are its functions
 * compiled for those instruction sets. A path is: reals per vector (tiles), whether the
 * products use fused multiply-adds, whether SiLU uses silu_expf (float32 with FMA). */
enum { KP_BASE, KP_AVX2, KP_AVX512 };
#if defined(__AVX512F__)
#define KP_BASE_BYTES 64
#elif defined(__AVX__)
#define KP_BASE_BYTES 32
#else
#define KP_BASE_BYTES 16
#endif
#define KP_VW(bytes) ((int)((bytes) / sizeof(real))) /* reals per vector of a path */
#if (defined(OARD_DOUBLE) && defined(FAST_FMA)) || (!defined(OARD_DOUBLE) && defined(FAST_FMAF))
#define KP_BASE_FMA 1
#else
#define KP_BASE_FMA 0
#endif
#ifdef SILU_SLEEF
#define KP_BASE_SLEEF 1
#else
#define KP_BASE_SLEEF 0
#endif
#ifdef OARD_DOUBLE
#define KP_SLEEF 0 /* the FMA paths' SiLU exponential: silu_expf in float32 */
#else
#define KP_SLEEF 1
#endif

#ifdef OARD_DISPATCH
#define TARGET_AVX2 __attribute__((target("avx2,fma")))
#define TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")))
/* the path in use: set once before main runs (or the library is used), read-only after */
static int kernel_path = KP_BASE;
static const char *const kernel_path_names[3] = {"generic", "avx2", "avx512"};
__attribute__((constructor)) static void kernel_path_init(void) {
    __builtin_cpu_init();
    int best = KP_BASE;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = KP_AVX2;
    if (best == KP_AVX2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))
        best = KP_AVX512;
    kernel_path = best;
    const char *want = getenv("OARD_ISA");
    for (int k = 0; want && k <= best; k++)
        if (!strcmp(want, kernel_path_names[k])) kernel_path = k;
}
#else
#define kernel_path KP_BASE
static const char *const kernel_path_names[3] = {"native", "native", "native"};
#endif

const char *oard_kernel_path(void) { return kernel_path_names[kernel_path]; }

NO_FMA_FN static inline real silu(real x) { return x / ((real)1 + SILU_EXP(-x)); } /* torch SiLU */

/* SiLU's exponential on a path: silu_expf (float32 where the path has FMA) or libm */
#if defined(OARD_DOUBLE)
#define KP_EXP(sleef, x) ((void)(sleef), exp(x))
#else
#define KP_EXP(sleef, x) ((sleef) ? silu_expf(x) : expf(x))
#endif

/* y[i] = SiLU(y[i]) over n values: one loop the compiler vectorises */
NO_FMA_FN static inline ALWAYS_INLINE void silu_inplace_body(real *y, size_t n, const int sleef) {
    for (size_t i = 0; i < n; i++) y[i] = y[i] / ((real)1 + KP_EXP(sleef, -y[i]));
}
#ifdef OARD_DISPATCH
TARGET_AVX2 NO_FMA_FN static void silu_inplace_avx2(real *y, size_t n) { silu_inplace_body(y, n, KP_SLEEF); }
TARGET_AVX512 NO_FMA_FN static void silu_inplace_avx512(real *y, size_t n) { silu_inplace_body(y, n, KP_SLEEF); }
#endif
NO_FMA_FN static void silu_inplace(real *y, size_t n) {
#ifdef OARD_DISPATCH
    if (kernel_path == KP_AVX512) silu_inplace_avx512(y, n);
    else if (kernel_path == KP_AVX2) silu_inplace_avx2(y, n);
    else
#endif
        silu_inplace_body(y, n, KP_BASE_SLEEF);
}

/* sum_k x[k] w[k] with VW partial sums (a reassociated dot product, vectorised) */
static real dot(const real *x, const real *w, int n) {
    real acc[VEC_BYTES / sizeof(real)] = {0}, sum = 0;
    int k = 0;
    for (; k + VW <= n; k += VW)
        for (int j = 0; j < VW; j++) acc[j] = MADD(x[k + j], w[k + j], acc[j]);
    for (int j = 0; j < VW; j++) sum += acc[j];
    for (; k < n; k++) sum += x[k] * w[k];
    return sum;
}

/* Matrix product y (rows, N) = x (rows, K) W (K, N) + bias, or y += x W (accumulate).
 * Leading dimensions ldx, ldy, ldw (W is a Linear's transposed weight, ldw a multiple of
 * TILE_N, or of VW for a block of a split weight). The output is computed in tiles of TILE_M rows x TILE_N columns held in registers:
 * for each k, the TILE_M inputs x[r][k] scale one row of W. Rows come in blocks of
 * MATMUL_MC, so that a block of x stays in the L2 cache while W is swept across it.
 * Each output is its products summed in order of k, then the bias (or the previous y)
 * added: exact algebra, reassociated. */
#define MATMUL_MC 192

/* One tile. nc (TILE_N or VW) is a constant after inlining (forced: with many callers of
 * matmul the compiler may otherwise call one generic copy, six times slower), so acc
 * lives in registers.
 * Rows past mr repeat the last valid row and are not stored; columns past ncv are the
 * zero padding of W and are not stored. */
static inline ALWAYS_INLINE void matmul_tile(const int nc, int mr, int ncv, real *y, size_t ldy, const real *x, size_t ldx,
                               size_t ksx, const real *w, size_t ldw, int K, const real *bias, int accumulate,
                               const int use_fma) {
    real acc[TILE_M][TILE_N];
    const real *xr[TILE_M];
    UNROLL_FULL
    for (int r = 0; r < TILE_M; r++) {
        xr[r] = x + (size_t)(r < mr ? r : mr - 1) * ldx;
        UNROLL_FULL
        for (int j = 0; j < TILE_N; j++) acc[r][j] = 0;
    }
    for (int k = 0; k < K; k++) {
        const real *wk = w + (size_t)k * ldw;
        UNROLL_FULL
        for (int r = 0; r < TILE_M; r++) {
            const real a = xr[r][(size_t)k * ksx];
            UNROLL_FULL
            for (int j = 0; j < nc; j++) acc[r][j] = use_fma ? RFMA(a, wk[j], acc[r][j]) : a * wk[j] + acc[r][j];
        }
    }
    for (int r = 0; r < mr; r++) {
        real *yr = y + (size_t)r * ldy;
        if (accumulate)
            for (int j = 0; j < ncv; j++) yr[j] += acc[r][j];
        else if (bias)
            for (int j = 0; j < ncv; j++) yr[j] = acc[r][j] + bias[j];
        else
            for (int j = 0; j < ncv; j++) yr[j] = acc[r][j];
    }
}

/* columns [j_begin, j_end) of the product (j_begin a multiple of TILE_N); x[r][k] is at
 * x + r ldx + k ksx (ksx 1: x row-major; ldx 1: x stored transposed). A code path's
 * tiles are two of its vectors (vw reals each) wide; fma: fused multiply-adds. */
static inline ALWAYS_INLINE void matmul_body(real *y, size_t ldy, const real *x, size_t ldx, size_t ksx, const real *w,
                                             size_t ldw, const real *bias, int K, int N, size_t rows, int accumulate,
                                             int j_begin, int j_end, const int vw, const int use_fma) {
    if (N < VW) { /* narrow outputs (not padded): one row at a time */
        for (size_t r = 0; r < rows; r++) {
            const real *xr = x + r * ldx;
            real *yr = y + r * ldy;
            for (int o = 0; o < N; o++) {
                real v = (N == 1 && ksx == 1) ? dot(xr, w, K) : 0;
                if (N > 1 || ksx != 1)
                    for (int k = 0; k < K; k++) v += xr[(size_t)k * ksx] * w[(size_t)k * ldw + o];
                yr[o] = accumulate ? yr[o] + v : (bias ? v + bias[o] : v);
            }
        }
        return;
    }
    for (size_t r0 = 0; r0 < rows; r0 += MATMUL_MC) {
        size_t rb = rows - r0 < MATMUL_MC ? rows - r0 : MATMUL_MC;
        for (int j0 = j_begin; j0 < j_end;) {
            int nc = (j_end - j0 > vw && (size_t)j0 + 2 * vw <= ldw) ? 2 * vw : vw;
            int ncv = j_end - j0 < nc ? j_end - j0 : nc;
            const real *bj = bias ? bias + j0 : NULL;
            for (size_t r = r0; r < r0 + rb; r += TILE_M) {
                int mr = (int)(r0 + rb - r < TILE_M ? r0 + rb - r : TILE_M);
                if (nc == 2 * vw)
                    matmul_tile(2 * vw, mr, ncv, y + r * ldy + j0, ldy, x + r * ldx, ldx, ksx, w + j0, ldw, K, bj,
                                accumulate, use_fma);
                else
                    matmul_tile(vw, mr, ncv, y + r * ldy + j0, ldy, x + r * ldx, ldx, ksx, w + j0, ldw, K, bj,
                                accumulate, use_fma);
            }
            j0 += nc;
        }
    }
}

/* the product on each code path (ksx 1), and the transposed one (matmul_tn) */
#ifdef OARD_DISPATCH
TARGET_AVX2 static void matmul_cols_avx2(real *y, size_t ldy, const real *x, size_t ldx, const real *w, size_t ldw,
                                         const real *bias, int K, int N, size_t rows, int accumulate, int j0, int j1) {
    matmul_body(y, ldy, x, ldx, 1, w, ldw, bias, K, N, rows, accumulate, j0, j1, KP_VW(32), 1);
}
TARGET_AVX512 static void matmul_cols_avx512(real *y, size_t ldy, const real *x, size_t ldx, const real *w, size_t ldw,
                                             const real *bias, int K, int N, size_t rows, int accumulate, int j0, int j1) {
    matmul_body(y, ldy, x, ldx, 1, w, ldw, bias, K, N, rows, accumulate, j0, j1, KP_VW(64), 1);
}
TARGET_AVX2 static void matmul_tn_avx2(real *y, size_t ldy, const real *x, size_t ldx, const real *w, size_t ldw, int K,
                                       int N, size_t rows) {
    matmul_body(y, ldy, x, 1, ldx, w, ldw, NULL, K, N, rows, 1, 0, N, KP_VW(32), 1);
}
TARGET_AVX512 static void matmul_tn_avx512(real *y, size_t ldy, const real *x, size_t ldx, const real *w, size_t ldw,
                                           int K, int N, size_t rows) {
    matmul_body(y, ldy, x, 1, ldx, w, ldw, NULL, K, N, rows, 1, 0, N, KP_VW(64), 1);
}
#endif

static void matmul_cols(real *y, size_t ldy, const real *x, size_t ldx, const real *w, size_t ldw, const real *bias,
                        int K, int N, size_t rows, int accumulate, int j_begin, int j_end) {
#ifdef OARD_DISPATCH
    if (kernel_path == KP_AVX512) matmul_cols_avx512(y, ldy, x, ldx, w, ldw, bias, K, N, rows, accumulate, j_begin, j_end);
    else if (kernel_path == KP_AVX2) matmul_cols_avx2(y, ldy, x, ldx, w, ldw, bias, K, N, rows, accumulate, j_begin, j_end);
    else
#endif
        matmul_body(y, ldy, x, ldx, 1, w, ldw, bias, K, N, rows, accumulate, j_begin, j_end, KP_VW(KP_BASE_BYTES),
                    KP_BASE_FMA);
}

/* y (rows, N) += x^T W with x (K, rows) row-major, ldx apart: the weight gradient's
 * dW^T += x^T dy of a Linear, x read in place (no transposed copy) */
static void matmul_tn(real *y, size_t ldy, const real *x, size_t ldx, const real *w, size_t ldw, int K, int N,
                      size_t rows) {
#ifdef OARD_DISPATCH
    if (kernel_path == KP_AVX512) matmul_tn_avx512(y, ldy, x, ldx, w, ldw, K, N, rows);
    else if (kernel_path == KP_AVX2) matmul_tn_avx2(y, ldy, x, ldx, w, ldw, K, N, rows);
    else
#endif
        matmul_body(y, ldy, x, 1, ldx, w, ldw, NULL, K, N, rows, 1, 0, N, KP_VW(KP_BASE_BYTES), KP_BASE_FMA);
}

static void matmul(real *y, size_t ldy, const real *x, size_t ldx, const real *w, size_t ldw, const real *bias, int K,
                   int N, size_t rows, int accumulate) {
    matmul_cols(y, ldy, x, ldx, w, ldw, bias, K, N, rows, accumulate, 0, N);
}

/* nn.Linear on rows: y (rows, out) = x (rows, in) W^T + b, then SiLU if act.
 * Plain twin: linear_train; gradient: linear_backward. */
static void linear_forward(const Linear *L, const real *x, size_t rows, real *y, int act) {
    matmul(y, (size_t)L->out, x, (size_t)L->in, L->wt, (size_t)L->ldw, L->b, L->in, L->out, rows, 0);
    if (act) silu_inplace(y, rows * (size_t)L->out);
}

/* upstream core.py MLP on rows; tmp must hold rows x (widest hidden layer).
 * Plain twin: mlp_train; gradient: mlp_backward. */
static void mlp_forward(const MLP *m, const real *x, size_t rows, real *y, real *tmp) {
    const real *in = x;
    for (int k = 0; k < m->n; k++) {
        int last = k == m->n - 1;
        real *o = last ? y : (k % 2 == 0 ? tmp : tmp + rows * (size_t)m->l[0].out);
        linear_forward(&m->l[k], in, rows, o, last ? m->last_act : 1);
        in = o;
    }
}

/* torch.nn.LayerNorm over the last dimension (biased variance, eps 1e-5); w, b NULL
 * without elementwise affine. Moments accumulated in double.
 * Plain twin: layernorm_train; gradient: layernorm_backward. */
static void layernorm_forward(const real *x, size_t rows, int n, const real *w, const real *b, real *y) {
    for (size_t r = 0; r < rows; r++) {
        const real *xr = x + r * (size_t)n;
        real *yr = y + r * (size_t)n;
        double mean = 0, var = 0;
        for (int i = 0; i < n; i++) mean += xr[i];
        mean /= n;
        for (int i = 0; i < n; i++) var += ((double)xr[i] - mean) * ((double)xr[i] - mean);
        var /= n;
        double inv = 1.0 / sqrt(var + 1e-5);
        for (int i = 0; i < n; i++) {
            real v = (real)(((double)xr[i] - mean) * inv);
            yr[i] = w ? v * w[i] + b[i] : v;
        }
    }
}

static inline void cross3(const real *a, const real *b, real *c) {
    c[0] = a[1] * b[2] - a[2] * b[1];
    c[1] = a[2] * b[0] - a[0] * b[2];
    c[2] = a[0] * b[1] - a[1] * b[0];
}
static inline real norm3(const real *a) { return RSQRT(a[0] * a[0] + a[1] * a[1] + a[2] * a[2]); }

/* ------------------------------------------------------------------------------------ */
/* The reaction graph                                                                      */

/* upstream utils/_graph_tools.py get_edges_index: every ordered pair of distinct nodes
 * of the same sample, across all three fragments, in row-major order of the adjacency.
 * Edge e runs src[e] = edge_index[0] -> dst[e] = edge_index[1]; since the graph is full,
 * the edges into node n are exactly the reverses of the edges out of n. */
typedef struct {
    int N, E, B, NF; /* nodes, edges, samples, nodes per fragment */
    int *src, *dst, *rev;
    int *out_start; /* (N + 1): edges out of n are out_start[n] .. out_start[n+1]-1 */
    int *sample, *frag, *rank; /* per node: sample, fragment, index inside its sample */
    int *frag_off;             /* (B + 1) node offset of sample b inside a fragment */
    int max_deg;
} Graph;

static void graph_free(Graph *g) {
    free(g->src);
    free(g->dst);
    free(g->rev);
    free(g->out_start);
    free(g->sample);
    free(g->frag);
    free(g->rank);
    free(g->frag_off);
    memset(g, 0, sizeof(*g));
}

static int graph_build(Graph *g, const oard_batch *batch, char *err) {
    memset(g, 0, sizeof(*g));
    if (!batch || batch->n_samples <= 0 || !batch->sizes)
        return fail(err, OARD_ERR_ARG, "batch: no samples");
    g->B = batch->n_samples;
    g->frag_off = xcalloc((size_t)g->B + 1, sizeof(int));
    if (!g->frag_off) return fail(err, OARD_ERR_NOMEM, "out of memory");
    long long E = 0;
    for (int b = 0; b < g->B; b++) {
        int n = batch->sizes[b];
        if (n <= 0 || n > 100000) return fail(err, OARD_ERR_ARG, "batch: sample %d has %d atoms", b, n);
        g->frag_off[b + 1] = g->frag_off[b] + n;
        E += (long long)(3 * n) * (3 * n - 1);
        if (3 * n - 1 > g->max_deg) g->max_deg = 3 * n - 1;
    }
    g->NF = g->frag_off[g->B];
    g->N = 3 * g->NF;
    if (E > INT32_MAX) return fail(err, OARD_ERR_NOMEM, "batch: %lld edges is too many", E);
    g->E = (int)E;
    g->src = xcalloc((size_t)E, sizeof(int));
    g->dst = xcalloc((size_t)E, sizeof(int));
    g->rev = xcalloc((size_t)E, sizeof(int));
    g->out_start = xcalloc((size_t)g->N + 1, sizeof(int));
    g->sample = xcalloc((size_t)g->N, sizeof(int));
    g->frag = xcalloc((size_t)g->N, sizeof(int));
    g->rank = xcalloc((size_t)g->N, sizeof(int));
    if (!g->src || !g->dst || !g->rev || !g->out_start || !g->sample || !g->frag || !g->rank)
        return fail(err, OARD_ERR_NOMEM, "batch: cannot allocate the graph (%lld edges)", E);
    for (int f = 0; f < 3; f++)
        for (int b = 0; b < g->B; b++)
            for (int a = 0; a < batch->sizes[b]; a++) {
                int n = f * g->NF + g->frag_off[b] + a;
                g->sample[n] = b;
                g->frag[n] = f;
                g->rank[n] = f * batch->sizes[b] + a;
            }
    int e = 0;
    for (int n = 0; n < g->N; n++) {
        g->out_start[n] = e;
        int b = g->sample[n], sz = batch->sizes[b];
        for (int f = 0; f < 3; f++)
            for (int a = 0; a < sz; a++) {
                int m = f * g->NF + g->frag_off[b] + a;
                if (m == n) continue;
                g->src[e] = n;
                g->dst[e] = m;
                e++;
            }
    }
    g->out_start[g->N] = e;
    for (e = 0; e < g->E; e++) { /* position of src among the out-neighbours of dst */
        int n = g->src[e], m = g->dst[e];
        g->rev[e] = g->out_start[m] + g->rank[n] - (g->rank[n] > g->rank[m]);
    }
    return OARD_OK;
}

/* ------------------------------------------------------------------------------------ */
/* LEFTNet (upstream model/leftnet.py)                                                     */

/* Work buffers: every array one forward pass needs, carved out of one allocation whose
 * size work_layout() computes from the configuration and the graph (and which
 * oard_memory_estimate reports before anything is allocated). A workspace keeps them
 * from one denoiser call to the next. */
typedef struct {
    real *mask, *dist, *rbound;  /* (E): geometry mask, masked distance, cosine cutoff */
    real *d, *c, *v;             /* (E, 3): edge frame (diff, cross, vertical), masked */
    real *rbf;                   /* (E, R) */
    real *ew;                    /* (E, 3H + R): edge weights [scalar_i, scalar_j, f, rbf] */
    real *pos_frame, *frame;     /* (N, 3), (N, 3, 3): node frame, frame[n][xyz][k] */
    real *pos_prjt;              /* (N, 3) */
    real *s, *vec;               /* (N, H), (N, 3, H) */
    real *xh, *A, *Bn, *agg;     /* (N, 3H) (xh in the message), (N, H) x 3 */
    real *dx, *dvec, *vtmp;      /* (N, 3H) (N, 3, H) (N, 3, 2H) */
    real *nodecat, *nodetmp;     /* (N, W), (N, 3W) scratch, W = max(4H, 48) */
    real *grad;                  /* (N, 3) pos_grad accumulator */
    real *edge_const;            /* (H) first GCL layer: edge block of every masked edge */
    real *centre_sum, *bv;       /* (N, 3) each: node-mask centring, node frame partner */
    real *pos, *h, *delta, *hout; /* dynamics wrapper: (N, 3) (N, I) (N, 3) (N, I) */
    real *feat, *enc, *enc_tmp;  /* per fragment: (NF, F) (NF, I) (NF, 4F) */
    real *scratch;               /* (threads, scratch_len): each thread's edge blocks */
    int *ue;                     /* unmasked edges grouped by target node (see below) */
    int *ue_start;               /* (N + 1) */
    int *label, *count, *partner; /* (N) each */
    size_t scratch_len;
    void *block;                 /* the one allocation */
} Work;



/* Lays out (or only measures, with w = NULL) the work buffers for graph g and nt threads:
 * returns the bytes of the one allocation, assigning the pointers when `base` is given. */
static size_t work_layout(Work *w, const oard_config *c, size_t N, size_t E, size_t NF, int nt, unsigned char *base) {
    const size_t H = (size_t)c->hidden_channels, R = (size_t)c->num_radial, EW = 3 * H + R, BE = EDGE_BLOCK;
    const size_t W = 4 * H > 48 ? 4 * H : 48, I = (size_t)c->in_hidden_channels;
    const size_t F = (size_t)(c->node_nfs[0] - c->pos_dim), A = 64; /* every array on a cache line */
    const size_t lin3w = H / 4 > 48 ? H / 4 : 48;
    /* one thread's scratch: the largest of the per-block needs (each sub-array aligned) */
    size_t gcl = 2 * round_up(BE * H, 16) + round_up(BE * EW, 16) + round_up(BE, 16);
    size_t msg = round_up(BE * EW, 16) + round_up(BE * R, 16) + 3 * round_up(BE * 3 * H, 16);
    size_t rad = round_up(BE * R, 16) + 2 * round_up(BE * H, 16);
    size_t ch = 4 * round_up(H, 16) + (2 * lin3w + 8) * round_up(H, 16); /* q (3H), out (H), hidden */
    size_t sl = gcl > msg ? gcl : msg;
    sl = sl > rad ? sl : rad;
    sl = sl > ch ? sl : ch;
    struct {
        void **p;
        size_t n, size;
    } slots[] = {
        {w ? (void **)&w->mask : NULL, E, sizeof(real)},          {w ? (void **)&w->dist : NULL, E, sizeof(real)},
        {w ? (void **)&w->rbound : NULL, E, sizeof(real)},        {w ? (void **)&w->d : NULL, 3 * E, sizeof(real)},
        {w ? (void **)&w->c : NULL, 3 * E, sizeof(real)},         {w ? (void **)&w->v : NULL, 3 * E, sizeof(real)},
        {w ? (void **)&w->rbf : NULL, E * R, sizeof(real)},       {w ? (void **)&w->ew : NULL, E * EW, sizeof(real)},
        {w ? (void **)&w->pos_frame : NULL, 3 * N, sizeof(real)}, {w ? (void **)&w->frame : NULL, 9 * N, sizeof(real)},
        {w ? (void **)&w->pos_prjt : NULL, 3 * N, sizeof(real)},  {w ? (void **)&w->s : NULL, N * H, sizeof(real)},
        {w ? (void **)&w->vec : NULL, 3 * N * H, sizeof(real)},   {w ? (void **)&w->xh : NULL, 3 * N * H, sizeof(real)},
        {w ? (void **)&w->A : NULL, N * H, sizeof(real)},         {w ? (void **)&w->Bn : NULL, N * H, sizeof(real)},
        {w ? (void **)&w->agg : NULL, N * H, sizeof(real)},       {w ? (void **)&w->dx : NULL, 3 * N * H, sizeof(real)},
        {w ? (void **)&w->dvec : NULL, 3 * N * H, sizeof(real)},  {w ? (void **)&w->vtmp : NULL, 6 * N * H, sizeof(real)},
        {w ? (void **)&w->nodecat : NULL, N * W, sizeof(real)},   {w ? (void **)&w->nodetmp : NULL, 3 * N * W, sizeof(real)},
        {w ? (void **)&w->grad : NULL, 3 * N, sizeof(real)},      {w ? (void **)&w->centre_sum : NULL, 3 * N, sizeof(real)},
        {w ? (void **)&w->edge_const : NULL, H, sizeof(real)},
        {w ? (void **)&w->bv : NULL, 3 * N, sizeof(real)},        {w ? (void **)&w->pos : NULL, 3 * N, sizeof(real)},
        {w ? (void **)&w->h : NULL, N * I, sizeof(real)},         {w ? (void **)&w->delta : NULL, 3 * N, sizeof(real)},
        {w ? (void **)&w->hout : NULL, N * I, sizeof(real)},      {w ? (void **)&w->feat : NULL, NF * F, sizeof(real)},
        {w ? (void **)&w->enc : NULL, NF * I, sizeof(real)},      {w ? (void **)&w->enc_tmp : NULL, NF * 4 * F, sizeof(real)},
        {w ? (void **)&w->scratch : NULL, (size_t)nt * sl, sizeof(real)},
        {w ? (void **)&w->ue : NULL, E, sizeof(int)},             {w ? (void **)&w->ue_start : NULL, N + 1, sizeof(int)},
        {w ? (void **)&w->label : NULL, N, sizeof(int)},          {w ? (void **)&w->count : NULL, N, sizeof(int)},
        {w ? (void **)&w->partner : NULL, N, sizeof(int)},
    };
    size_t off = 0;
    for (size_t i = 0; i < sizeof(slots) / sizeof(slots[0]); i++) {
        if (base) *slots[i].p = base + off;
        off += round_up(slots[i].n * slots[i].size, A);
    }
    if (w) w->scratch_len = sl;
    return off;
}

/* upstream LEFTNet.forward, whose inputs (graph, features, positions) the wrapper fills */
typedef struct {
    const oard_model *m;
    const Graph *g;
    Work *w;
    int nt; /* threads */
    oard_dump_fn dump;
    void *dump_ctx;
} Ctx;

/* The geometry of one forward pass (leftnet_geometry): every array the layers read that
 * depends on the positions alone. The arrays live in the work buffers. E edges, N nodes. */
typedef struct {
    const real *mask;            /* (E): the object-aware mask, object_aware_mask */
    const real *dist, *rbound;   /* (E): masked distance, cosine cutoff 0.5 (cos(pi r / cutoff) + 1) */
    const real *d, *c, *v;       /* (E, 3): edge frame (diff, cross, vertical), masked */
    const real *rbf;             /* (E, R): radial basis */
    const real *frame;           /* (N, 3, 3): node frame, frame[n][xyz][k] */
    const real *pos_prjt;        /* (N, 3): positions in the node frames */
    const int *ue, *ue_start;    /* the unmasked edges grouped by target node, (N + 1) starts */
} Geometry;

static void dump(const Ctx *cx, const char *name, const real *data, size_t rows, size_t cols) {
    if (cx->dump) cx->dump(cx->dump_ctx, name, data, rows, cols);
}

/* ---- threads ----
 * Edge work is split between threads by node: each thread owns a contiguous range of nodes
 * and every edge whose sums land on them, so no two threads write the same row and the
 * sums run in the same order whatever the thread count. */

/* smallest n in [0, N] with prefix[n] >= target (prefix is non-decreasing) */
static int first_node_at(const int *prefix, int N, long long target) {
    int lo = 0, hi = N;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (prefix[mid] >= target) hi = mid;
        else lo = mid + 1;
    }
    return lo;
}

/* The nodes [*n0, *n1) of thread tid of T, cut so that the threads get about equal shares
 * of the work; prefix (N + 1) is the running total of the work before each node. */
static void thread_nodes(const int *prefix, int N, int tid, int nt, int *n0, int *n1) {
    long long total = prefix[N] - prefix[0];
    *n0 = first_node_at(prefix, N, prefix[0] + total * tid / nt);
    *n1 = tid == nt - 1 ? N : first_node_at(prefix, N, prefix[0] + total * (tid + 1) / nt);
}

static real *thread_scratch(const Work *w) { return w->scratch + (size_t)THREAD_ID * w->scratch_len; }

/* A node-level product y (rows, N) = x W + bias [then SiLU], with its column tiles shared
 * out between the threads (few rows, so the columns are where the parallelism is); below
 * about 2M multiply-adds (20 us) it runs on the calling thread. */
static void node_matmul(const Ctx *cx, real *y, const real *in, size_t ldx, const real *w, size_t ldw, const real *bias,
                        int K, int N, size_t rows, int act) {
    const int strips = (N + TILE_N - 1) / TILE_N;
    if (cx->nt == 1 || N < VW || strips < 2 || rows * (size_t)K * (size_t)N < ((size_t)1 << 21)) {
        matmul(y, (size_t)N, in, ldx, w, ldw, bias, K, N, rows, 0);
        if (act) silu_inplace(y, rows * (size_t)N);
        return;
    }
#pragma omp parallel num_threads(cx->nt)
    {
        int nt = THREAD_COUNT, tid = THREAD_ID;
        int j0 = strips * tid / nt * TILE_N, j1 = strips * (tid + 1) / nt * TILE_N;
        if (j1 > N) j1 = N;
        if (j0 < j1) {
            matmul_cols(y, (size_t)N, in, ldx, w, ldw, bias, K, N, rows, 0, j0, j1);
            if (act)
                for (size_t r = 0; r < rows; r++) silu_inplace(y + r * (size_t)N + j0, (size_t)(j1 - j0));
        }
    }
}

static void node_linear(const Ctx *cx, const Linear *L, const real *in, size_t rows, real *y, int act) {
    node_matmul(cx, y, in, (size_t)L->in, L->wt, (size_t)L->ldw, L->b, L->in, L->out, rows, act);
}

/* LEFTNet.assemble_nodemask: labels nodes for centring. Visit nodes in index order; an
 * unlabelled node and all its masked-edge neighbours get a new label, overwriting labels
 * they had. Not connected components: reproduced as upstream wrote it. pos_frame is the
 * position minus the mean of its label group (remove_mean_batch). */
static void centre_by_nodemask(const Ctx *cx, const real *pos, real *pos_frame) {
    const Graph *g = cx->g;
    const real *mask = cx->w->mask;
    int N = g->N, *label = cx->w->label, *cnt = cx->w->count;
    real *sum = cx->w->centre_sum;
    memset(sum, 0, (size_t)N * 3 * sizeof(real));
    memset(cnt, 0, (size_t)N * sizeof(int));
    for (int n = 0; n < N; n++) label[n] = -1;
    int ind = 0;
    for (int n = 0; n < N; n++) {
        if (label[n] > -1) continue;
        for (int e = g->out_start[n]; e < g->out_start[n + 1]; e++)
            if (mask[e] > 0) label[g->dst[e]] = ind;
        label[n] = ind++;
    }
    /* scatter_mean, summed in the build's precision as upstream sums in its dtype */
    for (int n = 0; n < N; n++) {
        for (int k = 0; k < 3; k++) sum[3 * label[n] + k] += pos[3 * n + k];
        cnt[label[n]]++;
    }
    for (int n = 0; n < N; n++)
        for (int k = 0; k < 3; k++) pos_frame[3 * n + k] = pos[3 * n + k] - sum[3 * label[n] + k] / (real)cnt[label[n]];
}

/* The unmasked edges (same fragment when object_aware, within the cutoff), grouped by
 * target node n = edge_index[1] in the order of n's neighbours: the only edges that carry
 * geometry (radial filter, edge scalarisation, equivariant message). */
static void unmasked_edges(const Ctx *cx) {
    const Graph *g = cx->g;
    Work *w = cx->w;
    int k = 0;
    for (int n = 0; n < g->N; n++) {
        w->ue_start[n] = k;
        for (int e = g->out_start[n]; e < g->out_start[n + 1]; e++)
            if (w->mask[g->rev[e]] != 0) w->ue[k++] = g->rev[e];
    }
    w->ue_start[g->N] = k;
}

/* LEFTNet.scalarization + masking: edge frame (d, c, v) from pos_frame, distance and the
 * radial basis (RBFEmb). Mask = (raw distance < cutoff) x (same fragment) when object_aware. */
static void edge_frame(const Ctx *cx) {
    const oard_config *c = &cx->m->cfg;
    const Graph *g = cx->g;
    Work *w = cx->w;
    const int R = c->num_radial, H = c->hidden_channels, EW = 3 * H + R;
    const real cutoff = (real)c->cutoff, pi = (real)OARD_PI, eps = (real)EPS_FRAME;
    const real *pf = w->pos_frame;
    const real *mu = cx->m->net.rbf_means, *beta = cx->m->net.rbf_betas;
#pragma omp parallel for num_threads(cx->nt) schedule(static)
    for (int e = 0; e < g->E; e++) {
        int i = g->src[e], j = g->dst[e];
        real diff[3], cr[3], mask = w->mask[e];
        for (int k = 0; k < 3; k++) diff[k] = pf[3 * i + k] - pf[3 * j + k];
        real dist = norm3(diff);
        cross3(pf + 3 * i, pf + 3 * j, cr);
        real dn = dist + eps, cn = norm3(cr) + eps;
        real *d = w->d + 3 * e, *cc = w->c + 3 * e, *v = w->v + 3 * e;
        for (int k = 0; k < 3; k++) { d[k] = diff[k] / dn; cc[k] = cr[k] / cn; }
        cross3(d, cc, v);
        for (int k = 0; k < 3; k++) { d[k] *= mask; cc[k] *= mask; v[k] *= mask; }
        dist *= mask;
        w->mask[e] = mask;
        w->dist[e] = dist;
        real cosv = (real)0.5 * (RCOS(dist * pi / cutoff) + 1);
        w->rbound[e] = cosv;
        real rb = dist < cutoff ? cosv : 0;
        real em = REXP(-dist);
        real *rbf = w->rbf + (size_t)e * R, *ewr = w->ew + (size_t)e * EW + 3 * H;
        for (int k = 0; k < R; k++) {
            real t = em - mu[k];
            rbf[k] = rb * REXP(-beta[k] * (t * t)) * mask;
            ewr[k] = rbf[k];
        }
    }
}


/* f = radial_lin(rbf) * 0.5(cos(pi r / cutoff) + 1), written into ew[:, 2H:3H]. On a masked
 * edge rbf = 0 and r = 0, so f = radial_lin(0): a constant that carries the scalar messages
 * between fragments. It is computed once, from a zero row, and copied to every masked edge;
 * the unmasked edges run in blocks.
 * Plain twin: radial_train; gradient: radial_backward. */
static void radial_filter(const Ctx *cx, const Geometry *geo) {
    const oard_config *c = &cx->m->cfg;
    const LEFTNetParams *p = &cx->m->net;
    const Graph *g = cx->g;
    Work *w = cx->w;
    const int R = c->num_radial, H = c->hidden_channels, EW = 3 * H + R, BE = EDGE_BLOCK;
    real *f0 = w->A, *zero = w->scratch, *t0 = zero + round_up((size_t)R, 16); /* before the threads start */
    memset(zero, 0, (size_t)R * sizeof(real));
    linear_forward(&p->radial_lin0, zero, 1, t0, 1);
    linear_forward(&p->radial_lin2, t0, 1, f0, 0);
#pragma omp parallel num_threads(cx->nt)
    {
        real *rb = thread_scratch(w), *t1 = rb + round_up((size_t)BE * R, 16), *t2 = t1 + round_up((size_t)BE * H, 16);
        int n0, n1;
        thread_nodes(geo->ue_start, g->N, THREAD_ID, THREAD_COUNT, &n0, &n1);
        for (int u0 = geo->ue_start[n0]; u0 < geo->ue_start[n1]; u0 += BE) {
            int nb = geo->ue_start[n1] - u0 < BE ? geo->ue_start[n1] - u0 : BE;
            for (int k = 0; k < nb; k++) memcpy(rb + (size_t)k * R, geo->rbf + (size_t)geo->ue[u0 + k] * R, R * sizeof(real));
            linear_forward(&p->radial_lin0, rb, (size_t)nb, t1, 1);
            linear_forward(&p->radial_lin2, t1, (size_t)nb, t2, 0);
            for (int k = 0; k < nb; k++) {
                int e = geo->ue[u0 + k];
                real *f = w->ew + (size_t)e * EW + 2 * H;
                for (int h = 0; h < H; h++) f[h] = t2[(size_t)k * H + h] * geo->rbound[e];
            }
        }
#pragma omp for schedule(static)
        for (int e = 0; e < g->E; e++)
            if (geo->mask[e] == 0)
                for (int h = 0; h < H; h++) w->ew[(size_t)e * EW + 2 * H + h] = f0[h] * geo->rbound[e];
    }
}

/* NeighborEmb: s = z_emb + sum over edges into n of f * LN0(Linear(h))[source]
 * Plain twin: neighbor_emb_train; gradient: neighbor_emb_backward. */
static void neighbor_emb(const Ctx *cx, const real *h, real *s) {
    const oard_config *c = &cx->m->cfg;
    const LEFTNetParams *p = &cx->m->net;
    const Graph *g = cx->g;
    Work *w = cx->w;
    const int H = c->hidden_channels, EW = 3 * H + c->num_radial, N = g->N;
    real *t = w->nodetmp;
    linear_forward(&p->neighbor_emb, h, (size_t)N, t, 0);
    layernorm_forward(t, (size_t)N, H, NULL, NULL, t);
    linear_forward(&p->embedding, h, (size_t)N, s, 0);
#pragma omp parallel for num_threads(cx->nt) schedule(static)
    for (int n = 0; n < N; n++)
        for (int e = g->out_start[n]; e < g->out_start[n + 1]; e++) {
            int ein = g->rev[e], src = g->src[ein];
            const real *f = w->ew + (size_t)ein * EW + 2 * H;
            for (int k = 0; k < H; k++) s[(size_t)n * H + k] += f[k] * t[(size_t)src * H + k];
        }
}

/* CFConvS2V: NE1[n] (3, H) = sum over edges into n of (f (x) d) * SiLU(LN0(Linear(s)))[source]
 * Plain twin: s2v_train; gradient: s2v_backward. */
static void scalar_to_vector(const Ctx *cx, const Geometry *geo, const real *s, real *ne1) {
    const oard_config *c = &cx->m->cfg;
    const Graph *g = cx->g;
    Work *w = cx->w;
    const int H = c->hidden_channels, EW = 3 * H + c->num_radial, N = g->N;
    real *t = w->nodetmp;
    linear_forward(&cx->m->net.s2v_lin1, s, (size_t)N, t, 0);
    layernorm_forward(t, (size_t)N, H, NULL, NULL, t);
    for (size_t i = 0; i < (size_t)N * H; i++) t[i] = silu(t[i]);
    memset(ne1, 0, (size_t)N * 3 * H * sizeof(real));
#pragma omp parallel for num_threads(cx->nt) schedule(static)
    for (int n = 0; n < N; n++)
        for (int e = g->out_start[n]; e < g->out_start[n + 1]; e++) {
            int ein = g->rev[e], src = g->src[ein];
            const real *f = w->ew + (size_t)ein * EW + 2 * H, *d = geo->d + 3 * ein, *ts = t + (size_t)src * H;
            for (int k = 0; k < 3; k++)
                for (int hh = 0; hh < H; hh++) ne1[((size_t)n * 3 + k) * H + hh] += f[hh] * d[k] * ts[hh];
        }
}


/* LEFTNet's lin3 (Linear(3, a) SiLU [Linear(a, b) SiLU] Linear(., 1)), the same small MLP
 * applied to every channel h of q (rows q0, q1, q2 of H values), vectorised across the
 * channels: out[h]. Activations are kept channel-last, (width, H), in t (2 x 48 x H at
 * least). Each output is its bias plus its products in input order, as nn.Linear. */
static void lin3_channels(const Linear *l, int n_layers, const real *q, int H, real *out, real *t) {
    const real *in = q;
    const size_t Hs = round_up((size_t)H, 16);
    for (int k = 0; k < n_layers; k++) {
        const Linear *L = &l[k];
        int last = k == n_layers - 1;
        real *o = last ? out : t + (k % 2) * (size_t)(H / 4 > 48 ? H / 4 : 48) * Hs;
        for (int j = 0; j < L->out; j++) {
            real *oj = o + (size_t)j * Hs;
            for (int h = 0; h < H; h++) oj[h] = L->b[j];
            for (int i = 0; i < L->in; i++) {
                const real wv = L->wt[(size_t)i * L->ldw + j], *ii = in + (size_t)i * Hs;
                for (int h = 0; h < H; h++) oj[h] += ii[h] * wv;
            }
            if (!last) silu_inplace(oj, (size_t)H);
        }
        in = o;
    }
}

/* q (3 rows of H, stride Hs): a vector feature nv (x, y, z rows of H, ld apart) projected
 * on the axes fr[0..2] (each x, y, z) of a frame, |row 1| with reflect_equiv. */
static void frame_rows(const real *nv, size_t ld, int H, const real *const fr[3], int reflect, real *q) {
    const size_t Hs = round_up((size_t)H, 16);
    for (int k = 0; k < 3; k++) {
        real *qk = q + (size_t)k * Hs;
        for (int h = 0; h < H; h++) qk[h] = nv[h] * fr[k][0] + nv[ld + h] * fr[k][1] + nv[2 * ld + h] * fr[k][2];
    }
    if (reflect)
        for (int h = 0; h < H; h++) q[Hs + h] = RFABS(q[Hs + h]);
}

/* Edge weights from the vector features: project NE1 of each end on the edge frame,
 * |c-row| with reflect_equiv, scalar = lin3(rows) + d-row, times the cosine cutoff. On a
 * masked edge the frame is zero, so the scalar is lin3(0) for every channel: computed once.
 * Plain twin: edge_scalarization_train; gradient: edge_scalarization_backward. */
static void edge_scalarization(const Ctx *cx, const Geometry *geo, const real *ne1) {
    const oard_config *c = &cx->m->cfg;
    const LEFTNetParams *p = &cx->m->net;
    const Graph *g = cx->g;
    Work *w = cx->w;
    const int H = c->hidden_channels, EW = 3 * H + c->num_radial;
    const size_t Hs = round_up((size_t)H, 16);
    real *cst = w->A, *zq = w->scratch, *ct = zq + 3 * Hs; /* before the threads start */
    memset(zq, 0, 3 * Hs * sizeof(real));
    lin3_channels(p->lin3, 2, zq, H, cst, ct);
#pragma omp parallel num_threads(cx->nt)
    {
        real *q = thread_scratch(w), *out = q + 3 * Hs, *t = out + Hs;
#pragma omp for schedule(static)
        for (int u = 0; u < geo->ue_start[g->N]; u++) {
            int e = geo->ue[u];
            const real *fr[3] = {geo->d + 3 * e, geo->c + 3 * e, geo->v + 3 * e};
            for (int side = 0; side < 2; side++) {
                frame_rows(ne1 + (size_t)(side == 0 ? g->src[e] : g->dst[e]) * 3 * H, (size_t)H, H, fr, c->reflect_equiv, q);
                lin3_channels(p->lin3, 2, q, H, out, t);
                real *ew = w->ew + (size_t)e * EW + side * H;
                for (int h = 0; h < H; h++) ew[h] = (out[h] + q[h]) * geo->rbound[e];
            }
        }
#pragma omp for schedule(static)
        for (int e = 0; e < g->E; e++)
            if (geo->mask[e] == 0)
                for (int h = 0; h < 2 * H; h++) w->ew[(size_t)e * EW + h] = cst[h % H] * geo->rbound[e];
    }
}

/* Node frame (x1, y1, z1) per node, stored frame[n][xyz][k], and pos_prjt = pos_frame in it.
 * legacy: b = mean of pos_frame over the edges into n (the full graph, mask ignored).
 * When a fragment is one centred component, b = -a/(n-1) is parallel to a, so a x b is
 * rounding noise and y1 = noise / (|noise| + 1e-6): tiny in float64, up to ~0.5 long in
 * float32. The checkpoint was trained with this frame; it is kept as it is.
 * non-legacy: b = position of the nearest masked neighbour, with upstream nn_vector's
 * `pairs` shortcut (a node chosen as nearest by n takes n as its own partner). */
static void node_frame(const Ctx *cx) {
    const oard_config *c = &cx->m->cfg;
    const Graph *g = cx->g;
    Work *w = cx->w;
    const int N = g->N;
    const real eps = (real)EPS_FRAME;
    const real *pf = w->pos_frame;
    real *bv = w->bv;
    memset(bv, 0, (size_t)N * 3 * sizeof(real));
    if (c->legacy) {
        for (int n = 0; n < N; n++) {
            int cnt = 0;
            for (int e = g->out_start[n]; e < g->out_start[n + 1]; e++, cnt++)
                for (int k = 0; k < 3; k++) bv[3 * n + k] += pf[3 * g->src[g->rev[e]] + k];
            for (int k = 0; k < 3; k++) bv[3 * n + k] = cnt ? bv[3 * n + k] / (real)cnt : 0;
        }
    } else {
        int *partner = w->partner;
        for (int n = 0; n < N; n++) partner[n] = -1;
        for (int n = 0; n < N; n++) {
            int nn = n;
            if (partner[n] < 0) {
                real best = 0;
                int found = 0;
                for (int e = g->out_start[n]; e < g->out_start[n + 1]; e++) {
                    if (w->mask[e] != 1) continue;
                    if (!found || w->dist[e] < best) { best = w->dist[e]; nn = g->dst[e]; found = 1; }
                }
                partner[nn] = n;
            } else {
                nn = partner[n];
            }
            for (int k = 0; k < 3; k++) bv[3 * n + k] = pf[3 * nn + k];
        }
    }
    for (int n = 0; n < N; n++) {
        const real *a = pf + 3 * n, *b = bv + 3 * n;
        real amb[3], x1[3], y1[3], z1[3];
        for (int k = 0; k < 3; k++) amb[k] = a[k] - b[k];
        real na = norm3(amb) + eps;
        for (int k = 0; k < 3; k++) x1[k] = amb[k] / na;
        cross3(a, b, y1);
        real ny = norm3(y1) + eps;
        for (int k = 0; k < 3; k++) y1[k] /= ny;
        cross3(x1, y1, z1);
        real *fr = w->frame + 9 * n;
        for (int k = 0; k < 3; k++) { fr[3 * k + 0] = x1[k]; fr[3 * k + 1] = y1[k]; fr[3 * k + 2] = z1[k]; }
        for (int k = 0; k < 3; k++)
            w->pos_prjt[3 * n + k] = a[0] * fr[0 + k] + a[1] * fr[3 + k] + a[2] * fr[6 + k];
    }
}


/* GCLMessage (scalar message over every edge, masked or not):
 *   xh = LN(s); m = edge_mlp([xh_i, xh_j, edgeweight]); m *= SiLU(att_mlp(m));
 *   agg = mean of m over edges at edge_index[0]; s = xh + node_mlp([xh, agg]);
 *   edgeweight += SiLU(edge_out_trans(m)).
 * The first edge_mlp layer is split exactly into its three input blocks: the node blocks
 * (xh_i W_i + b, xh_j W_j) are computed once per node and added to the edge block of each
 * edge. In the first layer every masked edge has the same edge weights (zero frame and
 * RBF, r = 0), so their edge block is one row, computed once. The edges out of a node are
 * contiguous, so a thread owning a range of nodes runs their edges in blocks and sums agg
 * in edge order. In the last layer (last_layer) the
 * edge weights of masked edges are never read again (only the equivariant message reads
 * edge weights after it), so edge_out_trans runs on the unmasked edges only - unless a
 * dump of the layer outputs asks for all of them.
 * Plain twin: gcl_train; gradient: gcl_backward. */
static void gcl_message(const Ctx *cx, const Geometry *geo, const GCLParams *P, real *s, int first_layer, int last_layer) {
    const oard_config *c = &cx->m->cfg;
    const Graph *g = cx->g;
    Work *w = cx->w;
    const int H = c->hidden_channels, EW = 3 * H + c->num_radial, N = g->N, BE = EDGE_BLOCK;
    const Linear *l0 = &P->edge_mlp.l[0];
    const size_t ld0 = (size_t)l0->ldw;
    real *xh = w->xh, *A = w->A, *Bn = w->Bn, *agg = w->agg;
    const int masked_out = !last_layer || cx->dump;
    layernorm_forward(s, (size_t)N, H, P->ln_w, P->ln_b, xh);
    node_matmul(cx, A, xh, (size_t)H, l0->wt, ld0, l0->b, H, H, (size_t)N, 0);             /* xh_i block + b */
    node_matmul(cx, Bn, xh, (size_t)H, l0->wt + (size_t)H * ld0, ld0, NULL, H, H, (size_t)N, 0); /* xh_j block */
    const real *We = l0->wt + (size_t)2 * H * ld0;                                              /* edgeweight block */
    int e_masked = -1;
    for (int e = 0; first_layer && e < g->E && e_masked < 0; e++)
        if (geo->mask[e] == 0) e_masked = e;
    if (e_masked >= 0) matmul(w->edge_const, (size_t)H, w->ew + (size_t)e_masked * EW, (size_t)EW, We, ld0, NULL, EW, H, 1, 0);
#pragma omp parallel num_threads(cx->nt)
    {
        real *m1 = thread_scratch(w), *m2 = m1 + round_up((size_t)BE * H, 16);
        real *de = m2 + round_up((size_t)BE * H, 16), *att = de + round_up((size_t)BE * EW, 16);
        int n0, n1, rows[EDGE_BLOCK];
        thread_nodes(g->out_start, N, THREAD_ID, THREAD_COUNT, &n0, &n1);
        memset(agg + (size_t)n0 * H, 0, (size_t)(n1 - n0) * H * sizeof(real));
        for (int e0 = g->out_start[n0]; e0 < g->out_start[n1]; e0 += BE) {
            int nb = g->out_start[n1] - e0 < BE ? g->out_start[n1] - e0 : BE;
            for (int k = 0; k < nb; k++) {
                const real *ai = A + (size_t)g->src[e0 + k] * H, *bj = Bn + (size_t)g->dst[e0 + k] * H;
                real *r = m1 + (size_t)k * H;
                for (int h = 0; h < H; h++) r[h] = ai[h] + bj[h];
            }
            if (e_masked < 0) {
                matmul(m1, (size_t)H, w->ew + (size_t)e0 * EW, (size_t)EW, We, ld0, NULL, EW, H, (size_t)nb, 1);
            } else { /* first layer: the unmasked rows gathered, the masked ones share edge_const */
                int nu = 0;
                for (int k = 0; k < nb; k++) {
                    real *r = m1 + (size_t)k * H;
                    if (geo->mask[e0 + k] == 0)
                        for (int h = 0; h < H; h++) r[h] += w->edge_const[h];
                    else {
                        memcpy(de + (size_t)nu * EW, w->ew + (size_t)(e0 + k) * EW, EW * sizeof(real));
                        rows[nu++] = k;
                    }
                }
                matmul(m2, (size_t)H, de, (size_t)EW, We, ld0, NULL, EW, H, (size_t)nu, 0);
                for (int k = 0; k < nu; k++)
                    for (int h = 0; h < H; h++) m1[(size_t)rows[k] * H + h] += m2[(size_t)k * H + h];
            }
            silu_inplace(m1, (size_t)nb * H);
            linear_forward(&P->edge_mlp.l[1], m1, (size_t)nb, m2, 1);
            linear_forward(&P->att_mlp.l[0], m2, (size_t)nb, att, 1);
            for (int k = 0; k < nb; k++) {
                real *r = m2 + (size_t)k * H, *ag = agg + (size_t)g->src[e0 + k] * H;
                for (int h = 0; h < H; h++) { r[h] *= att[k]; ag[h] += r[h]; }
            }
            /* edgeweight += SiLU(edge_out_trans(m)), on the rows that are read again */
            int nk = 0;
            for (int k = 0; k < nb; k++)
                if (masked_out || geo->mask[e0 + k] != 0) rows[nk++] = k;
            if (nk < nb) /* gather the rows that are needed */
                for (int k = 0; k < nk; k++) memcpy(m1 + (size_t)k * H, m2 + (size_t)rows[k] * H, H * sizeof(real));
            const real *mo = (nk == nb) ? m2 : m1;
            linear_forward(&P->edge_out_trans.l[0], mo, (size_t)nk, de, 1);
            for (int k = 0; k < nk; k++) {
                real *ew = w->ew + (size_t)(e0 + rows[k]) * EW;
                const real *dk = de + (size_t)k * EW;
                for (int i = 0; i < EW; i++) ew[i] += dk[i];
            }
        }
        for (int n = n0; n < n1; n++) {
            int cnt = g->out_start[n + 1] - g->out_start[n];
            for (int h = 0; h < H; h++) agg[(size_t)n * H + h] = cnt ? agg[(size_t)n * H + h] / (real)cnt : 0;
        }
    }
    /* node update: s = xh + node_mlp([xh, agg]) (the residual starts from the normed xh) */
    real *cat = w->nodecat;
    for (int n = 0; n < N; n++) {
        memcpy(cat + (size_t)n * 2 * H, xh + (size_t)n * H, H * sizeof(real));
        memcpy(cat + (size_t)n * 2 * H + H, agg + (size_t)n * H, H * sizeof(real));
    }
    node_linear(cx, &P->node_mlp.l[0], cat, (size_t)N, w->nodetmp, 1);
    node_linear(cx, &P->node_mlp.l[1], w->nodetmp, (size_t)N, w->nodetmp + (size_t)N * H, P->node_mlp.last_act);
    for (size_t i = 0; i < (size_t)N * H; i++) s[i] = xh[i] + w->nodetmp[(size_t)N * H + i];
}

/* EquiMessage (equivariant message, inside a fragment only):
 *   xh = x_proj(LN(s)); w_e = rbf_proj(rbf) * dir_proj(edgeweight);
 *   (xh_src + xh_dst) * w_e split into (x, a, b), a /= sqrt(3);
 *   dvec = (vec_src a + b (x) d [+ x (x) c without reflect_equiv]) / sqrt(H), dx = x,
 *   both summed at the edge's target. rbf_proj has no bias and rbf = 0 on a masked edge,
 *   so masked edges contribute exactly zero: only the unmasked edges run, in blocks,
 *   grouped by target node (each thread owns a range of targets).
 * Plain twin: equi_message_train; gradient: equi_message_backward. */
static void equi_message(const Ctx *cx, const Geometry *geo, const MsgParams *P, const real *s, const real *vec, real *dx, real *dvec) {
    const oard_config *c = &cx->m->cfg;
    const Graph *g = cx->g;
    Work *w = cx->w;
    const int H = c->hidden_channels, R = c->num_radial, EW = 3 * H + R, N = g->N, BE = EDGE_BLOCK;
    const real inv_sqrt_3 = (real)(1.0 / sqrt(3.0)), inv_sqrt_h = (real)(1.0 / sqrt((double)H));
    real *xh = w->xh; /* (N, 3H) */
    layernorm_forward(s, (size_t)N, H, P->ln_w, P->ln_b, w->nodetmp);
    node_linear(cx, &P->x_proj0, w->nodetmp, (size_t)N, w->nodecat, 1);
    node_linear(cx, &P->x_proj2, w->nodecat, (size_t)N, xh, 0);
    memset(dx, 0, (size_t)N * H * sizeof(real));
    memset(dvec, 0, (size_t)N * 3 * H * sizeof(real));
#pragma omp parallel num_threads(cx->nt)
    {
        real *ewb = thread_scratch(w), *rbb = ewb + round_up((size_t)BE * EW, 16);
        real *t1 = rbb + round_up((size_t)BE * R, 16), *t2 = t1 + round_up((size_t)BE * 3 * H, 16);
        real *t3 = t2 + round_up((size_t)BE * 3 * H, 16);
        int n0, n1;
        thread_nodes(geo->ue_start, N, THREAD_ID, THREAD_COUNT, &n0, &n1);
        for (int u0 = geo->ue_start[n0]; u0 < geo->ue_start[n1]; u0 += BE) {
            int nb = geo->ue_start[n1] - u0 < BE ? geo->ue_start[n1] - u0 : BE;
            for (int k = 0; k < nb; k++) {
                int e = geo->ue[u0 + k];
                memcpy(ewb + (size_t)k * EW, w->ew + (size_t)e * EW, EW * sizeof(real));
                memcpy(rbb + (size_t)k * R, geo->rbf + (size_t)e * R, R * sizeof(real));
            }
            linear_forward(&P->dir_proj0, ewb, (size_t)nb, t1, 1);
            linear_forward(&P->dir_proj2, t1, (size_t)nb, t2, 0);
            linear_forward(&P->rbf_proj, rbb, (size_t)nb, t3, 0);
            for (int k = 0; k < nb; k++) {
                int e = geo->ue[u0 + k], m = g->src[e], n = g->dst[e];
                real *dxn = dx + (size_t)n * H, *dvn = dvec + (size_t)n * 3 * H;
                const real *xhn = xh + (size_t)n * 3 * H, *xhm = xh + (size_t)m * 3 * H, *vm = vec + (size_t)m * 3 * H;
                const real *wk = t2 + (size_t)k * 3 * H, *rk = t3 + (size_t)k * 3 * H;
                const real *d = geo->d + 3 * e, *cc = geo->c + 3 * e;
                for (int h = 0; h < H; h++) {
                    real xs = (xhm[h] + xhn[h]) * (rk[h] * wk[h]);
                    real a = (xhm[H + h] + xhn[H + h]) * (rk[H + h] * wk[H + h]) * inv_sqrt_3;
                    real b = (xhm[2 * H + h] + xhn[2 * H + h]) * (rk[2 * H + h] * wk[2 * H + h]);
                    dxn[h] += xs;
                    for (int q = 0; q < 3; q++) {
                        real v = vm[q * H + h] * a + b * d[q];
                        if (!c->reflect_equiv) v = v + xs * cc[q];
                        dvn[q * H + h] += v * inv_sqrt_h;
                    }
                }
            }
        }
    }
}

/* EquiUpdate: vec_proj(vec) -> vec1, vec2; vec1 in the node frame (|y1-row| with
 * reflect_equiv) through lin3 (3 -> 48 -> 8 -> 1) per channel -> scalar;
 * dot = sum_xyz vec1 vec2 / sqrt(H); (p, q, g) = xvec_proj([s, scalar]);
 * dx = (p + q + dot) / sqrt(2); dvec = g vec2.
 * Plain twin: equi_update_train; gradient: equi_update_backward. */
static void equi_update(const Ctx *cx, const Geometry *geo, const UpdParams *P, const real *s, const real *vec, real *dx, real *dvec) {
    const oard_config *c = &cx->m->cfg;
    Work *w = cx->w;
    const int H = c->hidden_channels, N = cx->g->N;
    const size_t Hs = round_up((size_t)H, 16);
    const real inv_sqrt_2 = (real)(1.0 / sqrt(2.0)), inv_sqrt_h = (real)(1.0 / sqrt((double)H));
    real *V = w->vtmp; /* (N, 3, 2H) */
    node_linear(cx, &P->vec_proj, vec, (size_t)N * 3, V, 0);
    real *cat = w->nodecat; /* (N, 2H): [s, scalar] */
    real *dot = w->agg;     /* (N, H) */
#pragma omp parallel num_threads(cx->nt)
    {
        real *q = thread_scratch(w), *t = q + 3 * Hs;
#pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            const real *fr = geo->frame + 9 * n, *v1 = V + (size_t)n * 6 * H, *v2 = v1 + H; /* xyz rows 2H apart */
            const real axes[3][3] = {{fr[0], fr[3], fr[6]}, {fr[1], fr[4], fr[7]}, {fr[2], fr[5], fr[8]}};
            const real *ax[3] = {axes[0], axes[1], axes[2]};
            memcpy(cat + (size_t)n * 2 * H, s + (size_t)n * H, H * sizeof(real));
            frame_rows(v1, 2 * (size_t)H, H, ax, c->reflect_equiv, q);
            lin3_channels(P->lin3, 3, q, H, cat + (size_t)n * 2 * H + H, t);
            for (int h = 0; h < H; h++)
                dot[(size_t)n * H + h] = (v1[h] * v2[h] + v1[2 * H + h] * v2[2 * H + h] + v1[4 * H + h] * v2[4 * H + h]) * inv_sqrt_h;
        }
    }
    real *t = w->nodetmp, *X = w->xh; /* (N, H), (N, 3H) */
    node_linear(cx, &P->xvec_proj0, cat, (size_t)N, t, 1);
    node_linear(cx, &P->xvec_proj2, t, (size_t)N, X, 0);
    for (int n = 0; n < N; n++)
        for (int h = 0; h < H; h++) {
            const real *Xn = X + (size_t)n * 3 * H;
            dx[(size_t)n * H + h] = (Xn[h] + Xn[H + h] + dot[(size_t)n * H + h]) * inv_sqrt_2;
            for (int q = 0; q < 3; q++)
                dvec[((size_t)n * 3 + q) * H + h] = Xn[2 * H + h] * V[((size_t)n * 3 + q) * 2 * H + H + h];
        }
}

/* GatedEquivariantBlock (Schuett et al. 2021): |vec1_proj(v)| over xyz (no epsilon),
 * update_net([x, that]) -> (x', gate); v' = gate * vec2_proj(v).
 * Plain twin: gated_output_train; gradient: gated_output_backward. */
static void gated_output(const GatedParams *P, int N, const real *xin, const real *vin, real *xout, real *vout,
                         real *scratch) {
    const int hid = P->hidden, out = P->out;
    real *v1 = scratch;                       /* (N, 3, hid) */
    real *v2 = v1 + (size_t)N * 3 * hid;      /* (N, 3, out) */
    real *cat = v2 + (size_t)N * 3 * out;     /* (N, 2 hid) */
    real *t = cat + (size_t)N * 2 * hid;      /* (N, hid) */
    real *u = t + (size_t)N * hid;            /* (N, 2 out) */
    linear_forward(&P->vec1_proj, vin, (size_t)N * 3, v1, 0);
    linear_forward(&P->vec2_proj, vin, (size_t)N * 3, v2, 0);
    for (int n = 0; n < N; n++) {
        memcpy(cat + (size_t)n * 2 * hid, xin + (size_t)n * hid, hid * sizeof(real));
        for (int h = 0; h < hid; h++) {
            const real *r = v1 + (size_t)n * 3 * hid + h;
            cat[(size_t)n * 2 * hid + hid + h] = RSQRT(r[0] * r[0] + r[hid] * r[hid] + r[2 * hid] * r[2 * hid]);
        }
    }
    linear_forward(&P->update_net0, cat, (size_t)N, t, 1);
    linear_forward(&P->update_net2, t, (size_t)N, u, 0);
    for (int n = 0; n < N; n++)
        for (int o = 0; o < out; o++) {
            xout[(size_t)n * out + o] = u[(size_t)n * 2 * out + o];
            for (int q = 0; q < 3; q++)
                vout[((size_t)n * 3 + q) * out + o] = u[(size_t)n * 2 * out + out + o] * v2[((size_t)n * 3 + q) * out + o];
        }
}


/* The object-aware mask, the paper's key idea (OA-ReactDiff, Fig. 1; upstream
 * EGNNDynamics with mask_edge_fragment and LEFTNet's cutoff): an edge carries geometry
 * (frames, radial basis, equivariant messages) only when both atoms lie in the same fragment
 * (R, TS or P) and closer than the cutoff. Scalar messages still cross fragments. */
static void object_aware_mask(const Ctx *cx, const real *pos) {
    const oard_config *c = &cx->m->cfg;
    const Graph *g = cx->g;
    Work *w = cx->w;
    for (int e = 0; e < g->E; e++) {
        const real *a = pos + 3 * g->src[e], *b = pos + 3 * g->dst[e];
        real r[3] = {a[0] - b[0], a[1] - b[1], a[2] - b[2]};
        int same_fragment = !c->object_aware || g->frag[g->src[e]] == g->frag[g->dst[e]];
        w->mask[e] = (norm3(r) < (real)c->cutoff && same_fragment) ? 1 : 0;
    }
}

/* The geometry of a forward pass, which no parameter but the RBF buffers touches: the
 * object-aware mask (needed before centring), the centring groups, edge frames, RBF and
 * node frames. */
static Geometry leftnet_geometry(const Ctx *cx, const real *pos) {
    Work *w = cx->w;
    object_aware_mask(cx, pos);
    unmasked_edges(cx);
    centre_by_nodemask(cx, pos, w->pos_frame);
    edge_frame(cx);
    node_frame(cx);
    Geometry geo = {w->mask, w->dist, w->rbound, w->d, w->c, w->v, w->rbf, w->frame, w->pos_prjt, w->ue, w->ue_start};
    return geo;
}

/* LEFTNet.forward. h (N, in_hidden), pos (N, 3). Outputs: s (N, H) always; unless
 * for_conf, dpos (N, 3) in delta, the pos_grad term (N, 3) in pos_grad (zero unless
 * c->pos_grad; upstream returns dpos + gradient, the wrapper adds them) and
 * embedding_out(s) (N, in_hidden) in h_out.
 * Plain twin: leftnet_train; gradient: leftnet_backward. */
static void leftnet_forward(const Ctx *cx, const real *h, const real *pos, real *delta, real *pos_grad, real *h_out) {
    const oard_config *c = &cx->m->cfg;
    const LEFTNetParams *p = &cx->m->net;
    const Graph *g = cx->g;
    Work *w = cx->w;
    const int H = c->hidden_channels, R = c->num_radial, N = g->N;
    const real inv_sqrt_2 = (real)(1.0 / sqrt(2.0));

    const Geometry geometry = leftnet_geometry(cx, pos);
    const Geometry *geo = &geometry;
    radial_filter(cx, geo);

    /* initial node features and vector features */
    real *s = w->s, *vec = w->vec;
    neighbor_emb(cx, h, s);
    dump(cx, "neighbor_emb.out", s, (size_t)N, (size_t)H);
    real *ne1 = w->dvec;
    scalar_to_vector(cx, geo, s, ne1);
    dump(cx, "s2v.out", ne1, (size_t)N, (size_t)3 * H);
    edge_scalarization(cx, geo, ne1);

    memset(vec, 0, (size_t)N * 3 * H * sizeof(real));
    memset(pos_grad, 0, (size_t)N * 3 * sizeof(real));
    char name[32];
    for (int i = 0; i < c->num_layers; i++) {
        if (c->legacy || i == 0) { /* s += pos_expansion(pos_prjt) */
            real *t = w->nodetmp, *u = w->nodecat;
            linear_forward(&p->pos_exp0, geo->pos_prjt, (size_t)N, t, 1);
            linear_forward(&p->pos_exp1, t, (size_t)N, u, 0);
            for (size_t k = 0; k < (size_t)N * H; k++) s[k] += u[k];
        }
        gcl_message(cx, geo, &p->gcl[i], s, i == 0, i == c->num_layers - 1);
        snprintf(name, sizeof(name), "gcl%d.out0", i);
        dump(cx, name, s, (size_t)N, (size_t)H);
        snprintf(name, sizeof(name), "gcl%d.out1", i);
        dump(cx, name, w->ew, (size_t)g->E, (size_t)(3 * H + R));

        equi_message(cx, geo, &p->msg[i], s, vec, w->dx, w->dvec);
        snprintf(name, sizeof(name), "msg%d.out0", i);
        dump(cx, name, w->dx, (size_t)N, (size_t)H);
        snprintf(name, sizeof(name), "msg%d.out1", i);
        dump(cx, name, w->dvec, (size_t)N, (size_t)3 * H);
        for (size_t k = 0; k < (size_t)N * H; k++) s[k] = (s[k] + w->dx[k]) * inv_sqrt_2;
        for (size_t k = 0; k < (size_t)N * 3 * H; k++) vec[k] += w->dvec[k];

        if (c->update) {
            equi_update(cx, geo, &p->upd[i], s, vec, w->dx, w->dvec);
            snprintf(name, sizeof(name), "upd%d.out0", i);
            dump(cx, name, w->dx, (size_t)N, (size_t)H);
            snprintf(name, sizeof(name), "upd%d.out1", i);
            dump(cx, name, w->dvec, (size_t)N, (size_t)3 * H);
            for (size_t k = 0; k < (size_t)N * H; k++) s[k] += w->dx[k];
            for (size_t k = 0; k < (size_t)N * 3 * H; k++) vec[k] += w->dvec[k];
        }
        if (c->pos_grad) { /* gradient += (c0 x1 + c1 y1 + c2 z1) / num_layers; twin pos_grad_train, pos_grad_backward */
            real *t = w->nodetmp, coef[3];
            for (int n = 0; n < N; n++) {
                linear_forward(&p->dyn0, s + (size_t)n * H, 1, t, 1);
                linear_forward(&p->dyn2, t, 1, coef, 0);
                const real *fr = geo->frame + 9 * n;
                for (int k = 0; k < 3; k++) {
                    real mix = coef[0] * fr[3 * k] + coef[1] * fr[3 * k + 1] + coef[2] * fr[3 * k + 2];
                    pos_grad[3 * n + k] += mix / (real)c->num_layers;
                }
            }
        }
    }
    if (c->for_conf) return;

    /* EquiOutput: one or two gated blocks -> dpos (N, 3) */
    real *xo = w->A, *vo = w->dx; /* block outputs */
    const real *xin = s, *vin = vec;
    for (int k = 0; k < p->n_out; k++) {
        real *xk = (k == 0) ? xo : w->Bn, *vk = (k == 0) ? vo : w->dvec;
        gated_output(&p->out[k], N, xin, vin, xk, vk, w->nodetmp);
        xin = xk; vin = vk;
    }
    dump(cx, "out_pos.out0", xin, (size_t)N, 1);
    dump(cx, "out_pos.out1", vin, (size_t)N, 3);
    for (int n = 0; n < N; n++)
        for (int k = 0; k < 3; k++) delta[3 * n + k] = vin[3 * n + k];
    linear_forward(&p->embedding_out, s, (size_t)N, h_out, 0);
}


/* ------------------------------------------------------------------------------------ */
/* Denoiser and confidence wrappers (upstream dynamics/egnn_dynamics.py, confidence.py)    */

static int check_finite(const real *a, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(a[i])) return 0;
    return 1;
}

/* ---- workspace: graph and work buffers of one batch shape, allocated once ---- */
struct oard_workspace {
    const oard_model *m;
    int B, nt;
    int *sizes; /* (B) a copy of the batch's sizes */
    Graph g;
    Work w;
};

static int batch_threads(const oard_batch *batch) {
#ifdef _OPENMP
    return batch->n_threads > 0 ? batch->n_threads : omp_get_max_threads();
#else
    (void)batch;
    return 1;
#endif
}

/* nodes and edges of a batch, checking it as graph_build does */
static int batch_shape(const oard_batch *batch, long long *N, long long *E, char *err) {
    *N = *E = 0;
    if (!batch || batch->n_samples <= 0 || !batch->sizes) return fail(err, OARD_ERR_ARG, "batch: no samples");
    for (int b = 0; b < batch->n_samples; b++) {
        long long n = batch->sizes[b];
        if (n <= 0 || n > 100000) return fail(err, OARD_ERR_ARG, "batch: sample %d has %lld atoms", b, n);
        *N += 3 * n;
        *E += 3 * n * (3 * n - 1);
    }
    return OARD_OK;
}

size_t oard_memory_estimate(const oard_model *m, const oard_batch *batch) {
    long long N, E;
    if (batch_shape(batch, &N, &E, NULL)) return 0;
    size_t graph = ((size_t)E * 3 + (size_t)N * 4 + (size_t)batch->n_samples + 2) * sizeof(int);
    return sizeof(struct oard_workspace) + graph +
           work_layout(NULL, &m->cfg, (size_t)N, (size_t)E, (size_t)N / 3, batch_threads(batch), NULL);
}

static void format_bytes(double bytes, char *buf, size_t n) {
    if (bytes >= 1024.0 * 1024 * 1024) snprintf(buf, n, "%.2f GiB", bytes / (1024.0 * 1024 * 1024));
    else snprintf(buf, n, "%.1f MiB", bytes / (1024.0 * 1024));
}

/* The most a workspace may take: max_bytes when given, else $OA_REACTDIFF_MAX_MEMORY
 * (bytes, or with a K, M, G suffix), else the physical memory where sysconf reports it,
 * else no limit. *what says which. */
static double memory_limit(size_t max_bytes, const char **what) {
    if (max_bytes) {
        *what = "the caller's limit";
        return (double)max_bytes;
    }
    const char *env = getenv("OA_REACTDIFF_MAX_MEMORY");
    if (env && *env) {
        char *end;
        double v = strtod(env, &end);
        double unit = (*end == 'K' || *end == 'k') ? 1024.0 : (*end == 'M' || *end == 'm') ? 1024.0 * 1024
                    : (*end == 'G' || *end == 'g') ? 1024.0 * 1024 * 1024 : 1.0;
        if (end != env && v > 0) {
            *what = "OA_REACTDIFF_MAX_MEMORY";
            return v * unit;
        }
    }
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) {
        *what = "the physical memory; OA_REACTDIFF_MAX_MEMORY sets another limit";
        return (double)pages * (double)page;
    }
#endif
    *what = "none";
    return HUGE_VAL;
}

int oard_workspace_new(const oard_model *m, const oard_batch *batch, size_t max_bytes, oard_workspace **out,
                       char *err) {
    *out = NULL;
    long long N, E;
    int rc = batch_shape(batch, &N, &E, err);
    if (rc) return rc;
    if (N == 3) /* upstream's torch.cross without dim would cross along the node axis */
        return fail(err, OARD_ERR_ARG, "a reaction of one atom per fragment is not supported");
    const char *what;
    double need = (double)oard_memory_estimate(m, batch), limit = memory_limit(max_bytes, &what);
    if (E > INT32_MAX || need > limit) {
        char a[32], b[32];
        format_bytes(need, a, sizeof a);
        format_bytes(limit, b, sizeof b);
        return fail(err, OARD_ERR_NOMEM, "system too large: %lld nodes, %lld edges need about %s of work memory; the limit is %s (%s)",
                    N, E, a, b, E > INT32_MAX ? "2^31 edges" : what);
    }
    oard_workspace *ws = xcalloc(1, sizeof(*ws));
    if (!ws) return fail(err, OARD_ERR_NOMEM, "out of memory");
    ws->m = m;
    ws->B = batch->n_samples;
    ws->nt = batch_threads(batch);
    ws->sizes = xcalloc((size_t)ws->B, sizeof(int));
    if (ws->sizes) memcpy(ws->sizes, batch->sizes, (size_t)ws->B * sizeof(int));
    rc = ws->sizes ? graph_build(&ws->g, batch, err) : fail(err, OARD_ERR_NOMEM, "out of memory");
    if (!rc) {
        size_t bytes = work_layout(NULL, &m->cfg, (size_t)N, (size_t)E, (size_t)N / 3, ws->nt, NULL);
        ws->w.block = aligned_calloc(bytes, 1);
        if (ws->w.block) work_layout(&ws->w, &m->cfg, (size_t)N, (size_t)E, (size_t)N / 3, ws->nt, ws->w.block);
        else {
            char a[32];
            format_bytes((double)bytes, a, sizeof a);
            rc = fail(err, OARD_ERR_NOMEM, "cannot allocate %s of work memory for %lld nodes, %lld edges", a, N, E);
        }
    }
    if (rc) {
        oard_workspace_free(ws);
        return rc;
    }
    *out = ws;
    return OARD_OK;
}

void oard_workspace_free(oard_workspace *ws) {
    if (!ws) return;
    aligned_free(ws->w.block);
    graph_free(&ws->g);
    free(ws->sizes);
    free(ws);
}

/* Shared front half: positions, per-fragment encoders, time and condition channels,
 * LEFTNet. h = [encoder_f(one-hot, Z), t, condition] (N, in_hidden). */
static int dynamics_run(oard_workspace *ws, const real *const xh[], const real *t, const real *cond,
                        oard_dump_fn dumpfn, void *dump_ctx, char *err) {
    const oard_model *m = ws->m;
    const oard_config *c = &m->cfg;
    const Graph *g = &ws->g;
    Work *w = &ws->w;
    const int NF = g->NF, I = c->in_hidden_channels, F = c->node_nfs[0] - c->pos_dim;
    const int Eemb = I - c->condition_time - c->condition_nf;
    for (int f = 0; f < 3; f++)
        if (!check_finite(xh[f], (size_t)NF * c->node_nfs[f]))
            return fail(err, OARD_ERR_NUMERIC, "denoiser input: fragment %d holds NaN or Inf", f);
    for (int f = 0; f < 3; f++) {
        const int nf = c->node_nfs[f];
        for (int i = 0; i < NF; i++) {
            for (int k = 0; k < 3; k++) w->pos[3 * ((size_t)f * NF + i) + k] = xh[f][(size_t)i * nf + k];
            for (int k = 0; k < F; k++) w->feat[(size_t)i * F + k] = xh[f][(size_t)i * nf + 3 + k];
        }
        mlp_forward(&m->enc[f], w->feat, (size_t)NF, w->enc, w->enc_tmp);
        for (int i = 0; i < NF; i++) {
            size_t n = (size_t)f * NF + i;
            int b = g->sample[n], col = Eemb;
            real *hn = w->h + n * I;
            memcpy(hn, w->enc + (size_t)i * Eemb, (size_t)Eemb * sizeof(real));
            if (c->condition_time) hn[col++] = t ? t[b] : 0;
            for (int k = 0; k < c->condition_nf; k++) hn[col++] = cond ? cond[(size_t)b * c->condition_nf + k] : 0;
        }
    }
    Ctx cx = {m, g, w, ws->nt, dumpfn, dump_ctx};
    leftnet_forward(&cx, w->h, w->pos, w->delta, w->grad, w->hout);
    return OARD_OK;
}

/* remove_mean_batch over the nodes of one fragment: subtract the per-sample mean of the
 * first three columns. frag_off (B + 1) gives each sample's rows. */
static void centre_fragment(real *x, int ld, const int *frag_off, int B) {
    for (int b = 0; b < B; b++) {
        int a0 = frag_off[b], na = frag_off[b + 1] - a0;
        for (int k = 0; k < 3; k++) {
            real sum = 0;
            for (int a = 0; a < na; a++) sum += x[(size_t)(a0 + a) * ld + k];
            real mean = sum / (real)na;
            for (int a = 0; a < na; a++) x[(size_t)(a0 + a) * ld + k] -= mean;
        }
    }
}

/* EGNNDynamics.forward on a workspace: velocity and decoded features */
static int denoise_run(oard_workspace *ws, const real *const xh[], const real *t, const real *cond, real *const eps[],
                       oard_dump_fn dumpfn, void *dump_ctx, char *err) {
    const oard_config *c = &ws->m->cfg;
    if (c->kind != OARD_KIND_DENOISER) return fail(err, OARD_ERR_MODEL, "oard_denoise needs a denoiser model");
    int rc = dynamics_run(ws, xh, t, cond, dumpfn, dump_ctx, err);
    if (rc) return rc;
    const Graph *g = &ws->g;
    Work *w = &ws->w;
    const int NF = g->NF, I = c->in_hidden_channels, F = c->node_nfs[0] - c->pos_dim;
    const int Eemb = I - c->condition_time - c->condition_nf;
    real *hin = w->enc, *tmp = w->enc_tmp, *dec = w->feat; /* free again after dynamics_run */
    for (int f = 0; f < 3; f++) {
        const int nf = c->node_nfs[f];
        for (int i = 0; i < NF; i++) {
            size_t n = (size_t)f * NF + i;
            for (int k = 0; k < 3; k++) { /* vel = pos_final - pos, pos_final = pos + dpos + gradient */
                real p = w->pos[3 * n + k];
                eps[f][(size_t)i * nf + k] = ((p + w->delta[3 * n + k]) + w->grad[3 * n + k]) - p;
            }
            memcpy(hin + (size_t)i * Eemb, w->hout + n * I, (size_t)Eemb * sizeof(real));
        }
        /* upstream replaces a NaN velocity by random noise; we report it instead */
        for (int i = 0; i < NF; i++)
            for (int k = 0; k < 3; k++)
                if (!isfinite(eps[f][(size_t)i * nf + k]))
                    return fail(err, OARD_ERR_NUMERIC, "denoiser produced NaN/Inf for sample %d (fragment %d)",
                                g->sample[(size_t)f * NF + i], f);
        centre_fragment(eps[f], nf, g->frag_off, g->B);
        mlp_forward(&ws->m->dec[f], hin, (size_t)NF, dec, tmp);
        for (int i = 0; i < NF; i++) memcpy(eps[f] + (size_t)i * nf + 3, dec + (size_t)i * F, (size_t)F * sizeof(real));
    }
    return OARD_OK;
}

int oard_denoise_ws(oard_workspace *ws, const oard_real *const xh[], const oard_real *t, const oard_real *cond,
                    oard_real *const eps[], char *err) {
    return denoise_run(ws, xh, t, cond, eps, NULL, NULL, err);
}

int oard_denoise(const oard_model *m, const oard_batch *batch, const oard_real *const xh[], const oard_real *t,
                 const oard_real *cond, oard_real *const eps[], oard_dump_fn dumpfn, void *dump_ctx, char *err) {
    if (m->cfg.kind != OARD_KIND_DENOISER) return fail(err, OARD_ERR_MODEL, "oard_denoise needs a denoiser model");
    oard_workspace *ws;
    int rc = oard_workspace_new(m, batch, 0, &ws, err);
    if (rc) return rc;
    rc = denoise_run(ws, xh, t, cond, eps, dumpfn, dump_ctx, err);
    oard_workspace_free(ws);
    return rc;
}

int oard_confidence(const oard_model *m, const oard_batch *batch, const oard_real *const xh[], const oard_real *cond,
                    oard_real *score, char *err) {
    const oard_config *c = &m->cfg;
    if (c->kind != OARD_KIND_CONFIDENCE) return fail(err, OARD_ERR_MODEL, "oard_confidence needs a confidence model");
    oard_workspace *ws;
    int rc = oard_workspace_new(m, batch, 0, &ws, err);
    if (rc) return rc;
    /* upstream passes t = tensor([0]): every node's time channel is 0 */
    rc = dynamics_run(ws, xh, NULL, cond, NULL, NULL, err);
    const Graph *g = &ws->g;
    const int H = c->hidden_channels;
    real *gf = ws->w.nodetmp, *a = gf + H; /* (H), (4H) */
    for (int b = 0; !rc && b < g->B; b++) {
        /* scatter_mean of s over every node of the sample (all three fragments) */
        int cnt = 0;
        memset(gf, 0, (size_t)H * sizeof(real));
        for (int n = 0; n < g->N; n++)
            if (g->sample[n] == b) {
                for (int h = 0; h < H; h++) gf[h] += ws->w.s[(size_t)n * H + h];
                cnt++;
            }
        for (int h = 0; h < H; h++) gf[h] /= (real)cnt;
        real y, gate; /* GatedMLP: mlp(x) * sigmoid(gmlp(x)) */
        mlp_forward(&m->readout_mlp, gf, 1, &y, a);
        mlp_forward(&m->readout_gmlp, gf, 1, &gate, a);
        score[b] = y * ((real)1 / ((real)1 + REXP(-gate)));
        if (!isfinite(score[b])) rc = fail(err, OARD_ERR_NUMERIC, "confidence score of sample %d is NaN/Inf", b);
    }
    oard_workspace_free(ws);
    return rc;
}

/* ------------------------------------------------------------------------------------ */
/* Noise schedules (upstream diffusion/_schedule.py)                                       */

/* numpy.linspace(start, stop, num): start + k * step, the last point exactly stop */
static void linspace(double start, double stop, int num, double *y) {
    double step = (stop - start) / (num - 1);
    for (int k = 0; k < num; k++) y[k] = (double)k * step + start;
    y[num - 1] = stop;
}

static double clip(double x, double lo, double hi) { return x < lo ? lo : (x > hi ? hi : x); }

/* alpha^2 for t = 0..T in float64, as upstream builds its table */
static int schedule_alphas2(const char *name, int T, double precision, double *a2, char *err) {
    const double pi = OARD_PI;
    if (strncmp(name, "cosine", 6) == 0) { /* cosine_beta_schedule(T, s=0.008, raise_to_power) */
        double power = 1;
        if (name[6] == '_') power = strtod(name + 7, NULL);
        else if (name[6]) return fail(err, OARD_ERR_ARG, "schedule '%s': unknown name", name);
        int steps = T + 2;
        double *x = malloc((size_t)steps * sizeof(double)), *ac = malloc((size_t)steps * sizeof(double));
        if (!x || !ac) {
            free(x); free(ac);
            return fail(err, OARD_ERR_NOMEM, "out of memory");
        }
        linspace(0, steps, steps, x);
        for (int k = 0; k < steps; k++) {
            double cv = cos(((x[k] / steps) + 0.008) / (1 + 0.008) * pi * 0.5);
            ac[k] = cv * cv;
        }
        double a0 = ac[0], cum = 1;
        for (int k = 0; k < steps; k++) ac[k] = ac[k] / a0;
        for (int k = 0; k < steps - 1; k++) {
            double beta = clip(1 - (ac[k + 1] / ac[k]), 0, 0.999);
            cum *= 1.0 - beta;
            a2[k] = power != 1 ? pow(cum, power) : cum;
        }
        free(x); free(ac);
    } else if (strncmp(name, "polynomial_", 11) == 0) { /* polynomial_schedule(T, s=precision, power) */
        char *end;
        double power = strtod(name + 11, &end);
        if (end == name + 11 || *end) return fail(err, OARD_ERR_ARG, "schedule '%s': bad power", name);
        int steps = T + 1;
        double *x = malloc((size_t)steps * sizeof(double));
        if (!x) return fail(err, OARD_ERR_NOMEM, "out of memory");
        linspace(0, steps, steps, x);
        double prev = 1, cum = 1;
        for (int k = 0; k < steps; k++) {
            double v = 1 - pow(x[k] / steps, power);
            v = v * v;
            cum *= clip(v / prev, 0.001, 1.0); /* clip_noise_schedule */
            prev = v;
            a2[k] = (1 - 2 * precision) * cum + precision;
        }
        free(x);
    } else if (strncmp(name, "csin_", 5) == 0) { /* ccosine_schedule(T, start, end, tau) */
        double st, en, tau;
        char tail;
        if (sscanf(name + 5, "%lf_%lf_%lf%c", &st, &en, &tau, &tail) != 3)
            return fail(err, OARD_ERR_ARG, "schedule '%s': expected csin_<start>_<end>_<tau>", name);
        double *t = malloc((size_t)(T + 1) * sizeof(double));
        if (!t) return fail(err, OARD_ERR_NOMEM, "out of memory");
        linspace(0, 1, T + 1, t);
        double v_start = pow(cos(st * pi / 2), 2 * tau), v_end = pow(cos(en * pi / 2), 2 * tau);
        for (int k = 0; k <= T; k++) {
            double o = pow(cos((t[k] * (en - st) + st) * pi / 2), 2 * tau);
            a2[k] = clip((v_end - o) / (v_end - v_start), 1e-9, 1 - 1e-9);
        }
        free(t);
    } else if (strcmp(name, "linear") == 0) {
        double *t = malloc((size_t)(T + 1) * sizeof(double));
        if (!t) return fail(err, OARD_ERR_NOMEM, "out of memory");
        linspace(0, 1, T + 1, t);
        for (int k = 0; k <= T; k++) a2[k] = clip(1 - t[k], 1e-9, 1 - 1e-9);
        free(t);
    } else {
        return fail(err, OARD_ERR_ARG, "unknown noise schedule '%s' (polynomial_<p>, cosine, csin_<a>_<b>_<tau>, linear)", name);
    }
    return OARD_OK;
}

int oard_schedule_init(oard_schedule *s, const char *name, int T, double precision, char *err) {
    memset(s, 0, sizeof(*s));
    if (T < 1 || T > 10000000) return fail(err, OARD_ERR_ARG, "schedule: timesteps %d out of range", T);
    if (strlen(name) >= sizeof(s->name)) return fail(err, OARD_ERR_ARG, "schedule: name too long");
    double *a2 = malloc((size_t)(T + 2) * sizeof(double));
    s->gamma = malloc((size_t)(T + 1) * sizeof(float));
    if (!a2 || !s->gamma) {
        free(a2); free(s->gamma);
        s->gamma = NULL;
        return fail(err, OARD_ERR_NOMEM, "out of memory");
    }
    int rc = schedule_alphas2(name, T, precision, a2, err);
    if (!rc) /* PredefinedNoiseSchedule: gamma = -(log a2 - log(1 - a2)), stored as float32 */
        for (int k = 0; k <= T; k++) s->gamma[k] = (float)(-(log(a2[k]) - log(1 - a2[k])));
    free(a2);
    if (rc) {
        free(s->gamma);
        s->gamma = NULL;
        return rc;
    }
    snprintf(s->name, sizeof(s->name), "%s", name);
    s->T = T;
    s->precision = precision;
    return OARD_OK;
}

void oard_schedule_free(oard_schedule *s) {
    free(s->gamma);
    s->gamma = NULL;
}

float oard_gamma(const oard_schedule *s, int t_int) { return s->gamma[t_int < 0 ? 0 : (t_int > s->T ? s->T : t_int)]; }

/* ---- float32 exp, log1p, expm1 as PyTorch's vectorised CPU kernels compute them ----
 * PyTorch 1.13 evaluates torch.exp, torch.expm1 and F.logsigmoid on float32 tensors with
 * the Sleef u10 functions (FMA variants), for tensors of every size; glibc's expf differs
 * from them by one ulp now and then. One ulp in alpha(t|s) at one step moves a float64
 * trajectory by ~6e-8, so the sampler needs the same functions. These reproduce Sleef
 * 3.5's xexpf, xlog1pf and xexpm1f bit for bit (checked on all 2^32 inputs against
 * libsleef, and on upstream's schedule arrays in golden/schedules). Their multiply-adds are
 * explicit fmaf; nothing else may be contracted, hence NO_FMA_FN. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif
NO_FMA_FN static inline int32_t f2i(float f) { int32_t i; memcpy(&i, &f, 4); return i; }
NO_FMA_FN static inline float i2f(int32_t i) { float f; memcpy(&f, &i, 4); return f; }
/* vpow2i_vf_vi2: 2^q by building the exponent field (q in [-126,127]) */
NO_FMA_FN static inline float pow2i(int q) { return i2f((int32_t)((uint32_t)(q + 0x7f) << 23)); }
/* vrint_vi2_vf (round-half-even float->int). Out-of-range / NaN inputs give 0 instead
     of C UB; every caller overrides those lanes with its special-case selects (NaN
     still propagates through the fma/add chain), so results are unchanged. */
NO_FMA_FN static inline int rint_i(float x) { float r = rintf(x); return fabsf(r) < 1024.0f ? (int)r : 0; }
/* vldexp2_vf_vf_vi2: d * 2^(q>>1) * 2^(q-(q>>1)), two separately rounded mults */
NO_FMA_FN static inline float ldexp2k(float d, int q) { return (d * pow2i(q >> 1)) * pow2i(q - (q >> 1)); }

/* double-float ("df") helpers, ENABLE_FMA_SP variants of Sleef df.h */
typedef struct { float x, y; } f2;
NO_FMA_FN static inline f2 mkf2(float x, float y) { f2 r = { x, y }; return r; }
/* dfadd_vf2_vf_vf: x + y (|x| >= |y| assumed) */
NO_FMA_FN static inline f2 df_add_ff(float x, float y) { float s = x + y; return mkf2(s, (x - s) + y); }
/* dfadd_vf2_vf_vf2 */
NO_FMA_FN static inline f2 df_add_f_f2(float x, f2 y) { float s = x + y.x; return mkf2(s, ((x - s) + y.x) + y.y); }
/* dfadd_vf2_vf2_vf */
NO_FMA_FN static inline f2 df_add_f2_f(f2 x, float y) { float s = x.x + y; return mkf2(s, ((x.x - s) + y) + x.y); }
/* dfadd_vf2_vf2_vf2 */
NO_FMA_FN static inline f2 df_add_f2_f2(f2 x, f2 y) { float s = x.x + y.x; return mkf2(s, (((x.x - s) + y.x) + x.y) + y.y); }
/* dfadd2_vf2_vf2_vf (two-sum, no magnitude assumption) */
NO_FMA_FN static inline f2 df_add2_f2_f(f2 x, float y) {
    float s = x.x + y, v = s - x.x;
    float e = (x.x - (s - v)) + (y - v);
    return mkf2(s, e + x.y);
}
/* dfadd2_vf2_vf2_vf2 */
NO_FMA_FN static inline f2 df_add2_f2_f2(f2 x, f2 y) {
    float s = x.x + y.x, v = s - x.x;
    float e = (x.x - (s - v)) + (y.x - v);
    return mkf2(s, e + (x.y + y.y));
}
/* dfscale_vf2_vf2_vf */
NO_FMA_FN static inline f2 df_scale(f2 d, float s) { return mkf2(d.x * s, d.y * s); }
/* dfmul_vf2_vf2_vf (FMA): r.y = fma(x.y, y, fma(x.x, y, -r.x)) */
NO_FMA_FN static inline f2 df_mul_f2_f(f2 x, float y) {
    float h = x.x * y;
    return mkf2(h, fmaf(x.y, y, fmaf(x.x, y, -h)));
}
/* dfmul_vf2_vf2_vf2 (FMA): r.y = fma(x.x, y.y, fma(x.y, y.x, fma(x.x, y.x, -r.x))) */
NO_FMA_FN static inline f2 df_mul_f2_f2(f2 x, f2 y) {
    float h = x.x * y.x;
    return mkf2(h, fmaf(x.x, y.y, fmaf(x.y, y.x, fmaf(x.x, y.x, -h))));
}
/* dfsqu_vf2_vf2 (FMA): r.y = fma(x.x + x.x, x.y, fma(x.x, x.x, -r.x)) */
NO_FMA_FN static inline f2 df_squ(f2 x) {
    float h = x.x * x.x;
    return mkf2(h, fmaf(x.x + x.x, x.y, fmaf(x.x, x.x, -h)));
}
/* dfdiv_vf2_vf2_vf2 (FMA): t = 1/d.x (true division, vrec = div on AVX2/AVX512) */
NO_FMA_FN static inline f2 df_div(f2 n, f2 d) {
    float t = 1.0f / d.x;
    float qx = n.x * t;
    float u = fmaf(t, n.x, -qx);
    float qy = fmaf(-d.y, t, fmaf(-d.x, t, 1.0f));
    qy = fmaf(qx, qy, fmaf(n.y, t, u));
    return mkf2(qx, qy);
}

/* Sleef xexpf (u10) */
#define R_LN2f 1.442695040888963407359924681001892137426645954152985934135449406931f
#define L2Uf 0.693145751953125f
#define L2Lf 1.428606765330187045e-06f
/* its core: e^d for d = q ln2 + s, q = rint(d / ln2) given as the float qf */
NO_FMA_FN static inline float expf_core(float d, float qf) {
    float s = fmaf(qf, -L2Uf, d);
    s = fmaf(qf, -L2Lf, s);
    float u = 0.000198527617612853646278381f;
    u = fmaf(u, s, 0.00139304355252534151077271f);
    u = fmaf(u, s, 0.00833336077630519866943359f);
    u = fmaf(u, s, 0.0416664853692054748535156f);
    u = fmaf(u, s, 0.166666671633720397949219f);
    u = fmaf(u, s, 0.5f);
    u = 1.0f + fmaf(s * s, u, s);
    return ldexp2k(u, (int)qf);
}
NO_FMA_FN static float torch_expf(float d) {
    float u = expf_core(d, (float)rint_i(d * R_LN2f));
    if (d < -104) u = 0;
    if (d > 104) u = INFINITY;
    return u;
}
/* The same for SiLU's x / (1 + exp(-x)), without branches so that a loop of it vectorises:
 * the input is clamped to [-104, 104] (NaN to -104; x is NaN then and so is the result)
 * and rounded to an integer multiple of ln2 by adding and subtracting 1.5 * 2^23 (rint for
 * |x| < 2^22). Inside the range this is torch_expf bit for bit; outside, SiLU comes out
 * the same: below, 1 + exp(-104) rounds to 1 as 1 + 0 does; above, exp(104) overflows to
 * inf as torch_expf's override does. */
#if !defined(OARD_DOUBLE) && (defined(FAST_FMAF) || defined(OARD_DISPATCH))
NO_FMA_FN static inline float silu_expf(float d) {
    d = d >= -104.0f ? d : -104.0f;
    d = d <= 104.0f ? d : 104.0f;
    return expf_core(d, (d * R_LN2f + 12582912.0f) - 12582912.0f);
}
#endif

/* ---------------- Sleef xlog1pf (u10) ----------------
 * AVX2 path: e = ilogb2k(dp1 * (1/0.75f)) from the exponent bits; AVX512 path uses
 * getexp(dp1*(1/0.75f)) (= same integer for normal numbers) -> identical results. */
NO_FMA_FN static float torch_log1pf(float d) {
    float dp1 = d + 1.0f;
    int o = dp1 < 1.17549435e-38f;                  /* FLT_MIN; only for dp1 tiny (d ~ -1) */
    if (o) dp1 *= 18446744073709551616.0f;          /* 2^64 */
    int e = ((f2i(dp1 * (1.0f / 0.75f)) >> 23) & 0xff) - 0x7f;
    float t = i2f(f2i(1.0f) + (int32_t)((uint32_t)(-e) << 23));   /* 2^-e (vldexp3) */
    float m = fmaf(d, t, t - 1.0f);
    if (o) e -= 64;
    f2 s = df_mul_f2_f(mkf2(0.69314718246459960938f, -1.904654323148236017e-09f), (float)e);
    f2 x = df_div(mkf2(m, 0.0f), df_add_ff(2.0f, m));
    float x2 = x.x * x.x;
    t = 0.3027294874e+0f;
    t = fmaf(t, x2, 0.3996108174e+0f);
    t = fmaf(t, x2, 0.6666694880e+0f);
    s = df_add_f2_f2(s, df_scale(x, 2.0f));
    s = df_add_f2_f(s, (x2 * x.x) * t);
    float r = s.x + s.y;
    if (d > 1e+38f) r = INFINITY;
    if (d < -1.0f || d != d) r = NAN;
    if (d == -1.0f) r = -INFINITY;
    if (d == 0.0f && signbit(d)) r = -0.0f;
    return r;
}

/* Sleef expk2f: exp of a double-float, result double-float */
NO_FMA_FN static f2 expk2f(f2 d) {
    int q = rint_i((d.x + d.y) * R_LN2f);
    f2 s = df_add2_f2_f(d, (float)q * -L2Uf);      /* plain multiplies (vmul), not fma */
    s = df_add2_f2_f(s, (float)q * -L2Lf);
    float u = 0.1980960224e-3f;
    u = fmaf(u, s.x, 0.1394256484e-2f);
    u = fmaf(u, s.x, 0.8333456703e-2f);
    u = fmaf(u, s.x, 0.4166637361e-1f);
    f2 t = df_add2_f2_f(df_mul_f2_f(s, u), 0.166666659414234244790680580464e+0f);
    t = df_add2_f2_f(df_mul_f2_f2(s, t), 0.5f);
    t = df_add2_f2_f2(s, df_mul_f2_f2(df_squ(s), t));
    t = df_add_f_f2(1.0f, t);
    t.x = ldexp2k(t.x, q);
    t.y = ldexp2k(t.y, q);
    if (d.x < -104) { t.x = 0; t.y = 0; }
    return t;
}

/* Sleef xexpm1f (u10) */
NO_FMA_FN static float torch_expm1f(float a) {
    f2 d = df_add2_f2_f(expk2f(mkf2(a, 0.0f)), -1.0f);
    float x = d.x + d.y;
    if (a > 88.72283172607421875f) x = INFINITY;
    if (a < -16.635532333438687426013570f) x = -1.0f;
    if (a == 0.0f && signbit(a)) x = -0.0f;
    return x;
}
#if defined(__clang__)
#pragma STDC FP_CONTRACT ON
#endif

/* DiffSchedule arithmetic, in float32 as upstream evaluates it on its float32 table */
/* torch.sigmoid and F.softplus run their scalar code (glibc) on the few elements of a
 * sampler's (batch, 1) tensors; F.logsigmoid is vectorised for every element. */
static float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }
static float softplusf_(float x) { return x > 20.0f ? x : log1pf(expf(x)); } /* F.softplus */
static float logsigmoidf_(float x) { return fminf(0.0f, x) - torch_log1pf(torch_expf(-fabsf(x))); }
float oard_sigma(float gamma) { return sqrtf(sigmoidf_(gamma)); }
float oard_alpha(float gamma) { return sqrtf(sigmoidf_(-gamma)); }
void oard_sigma_alpha_t_given_s(float gamma_t, float gamma_s, float *sigma2, float *sigma, float *alpha) {
    *sigma2 = -torch_expm1f(softplusf_(gamma_s) - softplusf_(gamma_t));
    *alpha = torch_expf(0.5f * (logsigmoidf_(-gamma_t) - logsigmoidf_(-gamma_s)));
    *sigma = sqrtf(*sigma2);
}

/* get_repaint_schedule: how many denoising steps to take before each jump back.
 * Upstream builds the list back to front, then reverses it; here a first pass counts the
 * entries, so the second can put entry i of that build at out[n - 1 - i] directly and
 * nothing is allocated. Returns the number of entries (at most cap are written), or -1
 * for settings out of range or a list longer than INT_MAX. */
int oard_repaint_schedule(int resamplings, int jump_length, int timesteps, int *out, int cap) {
    if (resamplings < 1 || jump_length < 1 || timesteps < 1) return -1;
    long long n = 0;
    for (int cur = 0; cur < timesteps; cur = cur + jump_length < timesteps ? cur + jump_length : timesteps)
        n += cur + jump_length < timesteps ? (n > 0 ? resamplings - 1 : resamplings) : (n > 0 ? 0 : 1);
    if (n > INT_MAX) return -1;
    if (!out) return (int)n;
#define REPAINT_AT(i) (n - 1 - (i) < cap ? &out[n - 1 - (i)] : NULL) /* entry i of the back-to-front build */
    long long k = 0;
    int *e;
    for (long long i = n - cap > 0 ? n - cap : 0; i < n; i++) out[n - 1 - i] = 0;
    for (int cur = 0; cur < timesteps;) {
        int step = cur + jump_length < timesteps ? jump_length : timesteps - cur;
        if (k > 0 && (e = REPAINT_AT(k - 1))) *e += step;
        if (cur + jump_length < timesteps) {
            for (int r = k > 0 ? 1 : 0; r < resamplings; r++, k++)
                if ((e = REPAINT_AT(k))) *e = jump_length;
        } else if (k == 0) {
            if ((e = REPAINT_AT(0))) *e = step;
            k = 1;
        }
        cur += step;
    }
#undef REPAINT_AT
    return (int)n;
}

/* ------------------------------------------------------------------------------------ */
/* Randomness                                                                              */

/* Seeded mode: xoshiro256** 1.0 (Blackman & Vigna, 2018), state filled by splitmix64.
 * Normals: Marsaglia's polar method. Its logarithm is our own (frexp + atanh series) and
 * everything else is +, -, *, /, sqrt, all exactly rounded by IEEE 754, so a seed gives the
 * same numbers on every machine and libm. Contraction into FMA is switched off here. */
static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro256ss(uint64_t *s) {
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

void oard_rng_seed(oard_rng *r, uint64_t seed) {
    memset(r, 0, sizeof(*r));
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

void oard_rng_replay(oard_rng *r, const double *tape, size_t n, const int64_t *shapes, size_t n_shapes) {
    memset(r, 0, sizeof(*r));
    r->tape = tape;
    r->tape_len = n;
    r->shapes = shapes;
    r->n_shapes = n_shapes;
}

NO_FMA_FN static double portable_log(double x) {
    NO_FMA_BEGIN
    int k;
    double m = frexp(x, &k); /* x = m 2^k, m in [0.5, 1) */
    if (m < 0.70710678118654752440) { m *= 2; k -= 1; }
    double z = (m - 1) / (m + 1), z2 = z * z, p = 0;
    for (int i = 12; i >= 1; i--) p = (p + 1.0 / (2 * i + 1)) * z2; /* sum z2^i / (2i+1) */
    return (double)k * 6.93147180369123816490e-01 + ((double)k * 1.90821492927058770002e-10 + 2 * z * (1 + p));
}

NO_FMA_FN static double rng_normal1(oard_rng *r) {
    NO_FMA_BEGIN
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    for (;;) {
        double u = (double)(xoshiro256ss(r->s) >> 11) * 0x1.0p-53 * 2 - 1;
        double v = (double)(xoshiro256ss(r->s) >> 11) * 0x1.0p-53 * 2 - 1;
        double q = u * u + v * v;
        if (q >= 1 || q == 0) continue;
        double f = sqrt(-2 * portable_log(q) / q);
        r->spare = v * f;
        r->has_spare = 1;
        return u * f;
    }
}

int oard_rng_normal(oard_rng *r, oard_real *out, size_t rows, size_t cols, char *err) {
    size_t n = rows * cols;
    if (r->tape) {
        if (r->shapes) {
            if (r->shape_pos >= r->n_shapes)
                return fail(err, OARD_ERR_FORMAT, "noise tape: draw %zu of shape (%zu, %zu) is past the end of the tape",
                            r->shape_pos, rows, cols);
            const int64_t *sh = r->shapes + 2 * r->shape_pos;
            if ((size_t)sh[0] != rows || (size_t)sh[1] != cols)
                return fail(err, OARD_ERR_FORMAT, "noise tape: draw %zu has shape (%zu, %zu), the tape recorded (%lld, %lld)",
                            r->shape_pos, rows, cols, (long long)sh[0], (long long)sh[1]);
            r->shape_pos++;
        }
        if (r->tape_pos + n > r->tape_len)
            return fail(err, OARD_ERR_FORMAT, "noise tape exhausted after %zu numbers", r->tape_pos);
        for (size_t i = 0; i < n; i++) out[i] = (real)r->tape[r->tape_pos + i];
        r->tape_pos += n;
        return OARD_OK;
    }
    for (size_t i = 0; i < n; i++) out[i] = (real)rng_normal1(r);
    return OARD_OK;
}

/* ------------------------------------------------------------------------------------ */
/* Samplers (upstream diffusion/en_diffusion.py EnVariationalDiffusion)                    */

typedef struct {
    const oard_model *m;
    const oard_batch *batch;
    oard_workspace *ws; /* the denoiser's buffers, allocated once for the whole run */
    oard_schedule sch;
    const real *cond;
    oard_rng *rng;
    char *err;
    int B, NF, nf, F; /* samples, atoms per fragment, row width, features */
    int *frag_off;
    real *eps[3], *noise[3], *h0[3]; /* (NF, nf) each; h0: the given features */
    real *tmp, *t;                   /* (NF, nf), (B) */
} Sampler;

/* the first row of each sample in a fragment (B + 1 prefix sums of the sizes, allocated
 * here); what names the caller in messages */
static int batch_offsets(const oard_batch *batch, const char *what, int **off_out, char *err) {
    const int B = batch->n_samples;
    int *off = xcalloc((size_t)B + 1, sizeof(int));
    *off_out = off;
    if (!off) return fail(err, OARD_ERR_NOMEM, "out of memory");
    for (int b = 0; b < B; b++) {
        if (batch->sizes[b] <= 0) return fail(err, OARD_ERR_ARG, "%s: sample %d has no atoms", what, b);
        off[b + 1] = off[b] + batch->sizes[b];
    }
    return OARD_OK;
}

static void sampler_free(Sampler *S) {
    for (int f = 0; f < 3; f++) { free(S->eps[f]); free(S->noise[f]); free(S->h0[f]); }
    free(S->tmp); free(S->t); free(S->frag_off);
    oard_workspace_free(S->ws);
    oard_schedule_free(&S->sch);
}

/* Everything a sampler run allocates, checked against the memory limit before anything
 * is: the denoiser's workspace, the sampler's rows (inpaint: also the RePaint copies and
 * segment list), the schedule tables, plus extra bytes of the caller's (its inputs and
 * outputs). The message is the workspace's "system too large". */
static int sampler_check_memory(const oard_model *m, const oard_batch *batch, const oard_sampler_opts *o, int inpaint,
                                double extra, char *err) {
    long long N, E;
    int rc = batch_shape(batch, &N, &E, err);
    if (rc) return rc;
    const oard_config *c = &m->cfg;
    double T = (o && o->timesteps > 0) ? o->timesteps : c->sampling_timesteps, segs = 0;
    double rows = (double)(N / 3) * c->node_nfs[0] * sizeof(real); /* one (NF, nf) array */
    if (inpaint) {
        int r = (o && o->resamplings > 0) ? o->resamplings : 1, j = (o && o->jump_length > 0) ? o->jump_length : 1;
        segs = oard_repaint_schedule(r, j, (int)T, NULL, 0);
        if (segs <= 0) return fail(err, OARD_ERR_ARG, "bad RePaint settings (resamplings %d, jump %d)", r, j);
    }
    double need = (double)oard_memory_estimate(m, batch) + (10 + (inpaint ? 9 : 3)) * rows + segs * sizeof(int) +
                  (T + 2) * (sizeof(float) + 3 * sizeof(double)) + (double)batch->n_samples * (sizeof(real) + sizeof(int)) + extra;
    const char *what;
    double limit = memory_limit(0, &what);
    if (need > limit) {
        char a[32], b[32];
        format_bytes(need, a, sizeof a);
        format_bytes(limit, b, sizeof b);
        return fail(err, OARD_ERR_NOMEM, "system too large: %d samples of %lld nodes, %lld edges%s need about %s of work memory; the limit is %s (%s)",
                    batch->n_samples, N, E, inpaint ? ", RePaint" : "", a, b, what);
    }
    return OARD_OK;
}

static int sampler_init(Sampler *S, const oard_model *m, const oard_batch *batch, const oard_sampler_opts *o,
                        int inpaint, const real *cond, oard_rng *rng, char *err) {
    const oard_config *c = &m->cfg;
    memset(S, 0, sizeof(*S));
    if (c->kind != OARD_KIND_DENOISER) return fail(err, OARD_ERR_MODEL, "sampling needs a denoiser model");
    if (c->objective != OARD_OBJECTIVE_DIFFUSION)
        return fail(err, OARD_ERR_MODEL, "a bridge (React-OT) model generates a TS from R and P only; this sampler needs a diffusion model");
    if (!c->pos_only)
        return fail(err, OARD_ERR_MODEL, "model generates features (pos_only=0): not supported by this sampler");
    for (int k = 0; k < 3; k++)
        if (c->norm_values[k] != 1 || c->norm_biases[k] != 0)
            return fail(err, OARD_ERR_MODEL, "model uses normalisation values other than 1 / biases other than 0: not supported");
    if (!batch || batch->n_samples <= 0) return fail(err, OARD_ERR_ARG, "sampler: no samples");
    int rc = sampler_check_memory(m, batch, o, inpaint, 0, err);
    if (rc) return rc;
    S->m = m; S->batch = batch; S->cond = cond; S->rng = rng; S->err = err;
    S->B = batch->n_samples;
    S->nf = c->node_nfs[0];
    S->F = S->nf - c->pos_dim;
    rc = batch_offsets(batch, "sampler", &S->frag_off, err);
    if (rc) return rc;
    S->NF = S->frag_off[S->B];
    const char *name = (o && o->schedule) ? o->schedule : c->sampling_schedule;
    int T = (o && o->timesteps > 0) ? o->timesteps : c->sampling_timesteps;
    double prec = (o && o->precision > 0) ? o->precision : c->sampling_precision;
    rc = oard_schedule_init(&S->sch, name, T, prec, err);
    if (!rc) rc = oard_workspace_new(m, batch, 0, &S->ws, err);
    if (rc) return rc;
    size_t n = (size_t)S->NF * S->nf;
    for (int f = 0; f < 3; f++) {
        S->eps[f] = xcalloc(n, sizeof(real));
        S->noise[f] = xcalloc(n, sizeof(real));
        S->h0[f] = xcalloc(n, sizeof(real));
        if (!S->eps[f] || !S->noise[f] || !S->h0[f]) return fail(err, OARD_ERR_NOMEM, "out of memory");
    }
    S->tmp = xcalloc(n, sizeof(real));
    S->t = xcalloc((size_t)S->B, sizeof(real));
    if (!S->tmp || !S->t) return fail(err, OARD_ERR_NOMEM, "out of memory");
    return OARD_OK;
}

/* sample_combined_position_feature_noise: per fragment a (NF, 3) draw centred per sample,
 * then an (NF, F) draw for the features, zeroed when pos_only. */
static int combined_noise(Sampler *S, real *const out[3]) {
    int rc = 0;
    for (int f = 0; f < 3; f++) {
        TRY(oard_rng_normal(S->rng, S->tmp, (size_t)S->NF, 3, S->err));
        centre_fragment(S->tmp, 3, S->frag_off, S->B);
        for (int i = 0; i < S->NF; i++)
            for (int k = 0; k < 3; k++) out[f][(size_t)i * S->nf + k] = S->tmp[3 * i + k];
        TRY(oard_rng_normal(S->rng, S->tmp, (size_t)S->NF, (size_t)S->F, S->err));
        for (int i = 0; i < S->NF; i++)
            for (int k = 0; k < S->F; k++)
                out[f][(size_t)i * S->nf + 3 + k] = S->m->cfg.pos_only ? 0 : S->tmp[(size_t)i * S->F + k];
    }
    return OARD_OK;
}

/* pos_only: the features are put back to the given one-hot and Z */
static void restore_features(Sampler *S, real *const z[3]) {
    for (int f = 0; f < 3; f++)
        for (int i = 0; i < S->NF; i++)
            memcpy(z[f] + (size_t)i * S->nf + 3, S->h0[f] + (size_t)i * S->nf + 3, (size_t)S->F * sizeof(real));
}

static int denoise_at(Sampler *S, real *const z[3], real tval) {
    for (int b = 0; b < S->B; b++) S->t[b] = tval;
    const real *zin[3] = {z[0], z[1], z[2]};
    return denoise_run(S->ws, zin, S->t, S->cond, S->eps, NULL, NULL, S->err);
}

/* sample_p_zs_given_zt: one reverse step from t = s + 1 to s (all fragments) */
static int p_zs_given_zt(Sampler *S, int s, real *const z[3]) {
    const int T = S->sch.T;
    float g_s = oard_gamma(&S->sch, s), g_t = oard_gamma(&S->sch, s + 1), s2, st, at;
    oard_sigma_alpha_t_given_s(g_t, g_s, &s2, &st, &at);
    float sig_s = oard_sigma(g_s), sig_t = oard_sigma(g_t);
    int rc = denoise_at(S, z, (real)(s + 1) / (real)T);
    if (rc) return rc;
    /* mu = z_t / alpha_t|s - eps * (sigma2_t|s / alpha_t|s / sigma_t); sigma = sigma_t|s sigma_s / sigma_t.
     * The coefficients are float32 products, as upstream forms them on its float32 table. */
    float coef = s2 / at / sig_t, sigma = st * sig_s / sig_t;
    TRY(combined_noise(S, S->noise));
    size_t n = (size_t)S->NF * S->nf;
    for (int f = 0; f < 3; f++) {
        for (size_t i = 0; i < n; i++) {
            real mu = z[f][i] / (real)at - S->eps[f][i] * (real)coef;
            z[f][i] = mu + (real)sigma * S->noise[f][i];
        }
        centre_fragment(z[f], S->nf, S->frag_off, S->B);
    }
    return OARD_OK;
}

/* sample_p_xh_given_z0: x = (z0 - sigma_0 eps) / alpha_0 + exp(gamma_0 / 2) noise */
static int p_xh_given_z0(Sampler *S, real *const z[3], real *const out[3]) {
    float g0 = oard_gamma(&S->sch, 0);
    float sigma_x = torch_expf(-(-0.5f * g0)); /* SNR(-gamma_0 / 2) = torch.exp */
    float sig0 = oard_sigma(g0), inv_al0 = 1.0f / oard_alpha(g0);
    int rc = denoise_at(S, z, 0);
    if (rc) return rc;
    TRY(combined_noise(S, S->noise));
    for (int f = 0; f < 3; f++)
        for (int i = 0; i < S->NF; i++)
            for (int k = 0; k < S->nf; k++) {
                size_t j = (size_t)i * S->nf + k;
                if (k < 3) {
                    real x = (real)inv_al0 * (z[f][j] - (real)sig0 * S->eps[f][j]);
                    out[f][j] = x + (real)sigma_x * S->noise[f][j];
                } else {
                    out[f][j] = S->h0[f][j]; /* pos_only: atom types are the given ones */
                }
            }
    return OARD_OK;
}

static int check_samples(Sampler *S, real *const z[3], const char *where) {
    for (int f = 0; f < 3; f++)
        for (int i = 0; i < S->NF; i++)
            for (int k = 0; k < 3; k++)
                if (!isfinite(z[f][(size_t)i * S->nf + k])) {
                    int b = 0;
                    while (b + 1 < S->B && i >= S->frag_off[b + 1]) b++;
                    return fail(S->err, OARD_ERR_NUMERIC, "NaN/Inf in sample %d (%s)", b, where);
                }
    return OARD_OK;
}

int oard_sample(const oard_model *m, const oard_batch *batch, const oard_sampler_opts *o, const oard_real *cond,
                oard_real *const xh[], oard_rng *rng, char *err) {
    Sampler S;
    int rc = sampler_init(&S, m, batch, o, 0, cond, rng, err);
    real *z[3] = {NULL, NULL, NULL};
    size_t n = (size_t)S.NF * S.nf;
    for (int f = 0; !rc && f < 3; f++) {
        memcpy(S.h0[f], xh[f], n * sizeof(real));
        z[f] = xcalloc(n, sizeof(real));
        if (!z[f]) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
    }
    if (!rc) rc = combined_noise(&S, z); /* z_T */
    if (!rc) restore_features(&S, z);
    for (int s = S.sch.T - 1; !rc && s >= 0; s--) {
        rc = p_zs_given_zt(&S, s, z);
        if (!rc) restore_features(&S, z);
        if (!rc) rc = check_samples(&S, z, "during denoising");
        if (!rc && o && o->progress) o->progress(o->progress_ctx, S.sch.T - s, S.sch.T);
    }
    if (!rc) rc = p_xh_given_z0(&S, z, xh);
    if (!rc) rc = check_samples(&S, xh, "final step");
    for (int f = 0; f < 3; f++) free(z[f]);
    sampler_free(&S);
    return rc;
}

/* The RePaint schedule of jumps (oard_repaint_schedule) into *segs (n_segs entries). */
static int repaint_segments(int resamplings, int jump, int T, int **segs, int *n_segs, char *err) {
    int n = oard_repaint_schedule(resamplings, jump, T, NULL, 0);
    if (n <= 0) return fail(err, OARD_ERR_ARG, "bad RePaint settings (resamplings %d, jump %d)", resamplings, jump);
    *segs = xcalloc((size_t)n, sizeof(int));
    if (!*segs) return fail(err, OARD_ERR_NOMEM, "out of memory (RePaint schedule of %d segments)", n);
    *n_segs = n;
    if (oard_repaint_schedule(resamplings, jump, T, *segs, n) != n)
        return fail(err, OARD_ERR_ARG, "bad RePaint settings (resamplings %d, jump %d)", resamplings, jump);
    return OARD_OK;
}

/* One RePaint step at level s (Lugmayr et al. 2022, Algorithm 1, lines 4-8): the fixed
 * fragments noised to level s (noise drawn for all three), the whole reaction denoised one
 * step, then R and P replaced by their noised copies while the TS keeps its denoised one. */
static int repaint_step(Sampler *S, int s, real *const z[3], real *const known[3], real *const x0[3]) {
    size_t n = (size_t)S->NF * S->nf;
    float g_s = oard_gamma(&S->sch, s), al_s = oard_alpha(g_s), sig_s = oard_sigma(g_s);
    int rc = combined_noise(S, S->noise);
    if (rc) return rc;
    for (int f = 0; f < 3; f++)
        for (size_t k = 0; k < n; k++) known[f][k] = (real)al_s * x0[f][k] + (real)sig_s * S->noise[f][k];
    rc = p_zs_given_zt(S, s, z);
    if (rc) return rc;
    restore_features(S, z);
    for (int f = 0; f < 3; f += 2)
        for (int a = 0; a < S->NF; a++) memcpy(z[f] + (size_t)a * S->nf, known[f] + (size_t)a * S->nf, 3 * sizeof(real));
    return check_samples(S, z, "during denoising");
}

/* RePaint's jump back from level s to t > s (Algorithm 1, line 10): z_t = alpha_t|s z_s +
 * sigma_t|s noise, centred per fragment. The features are not restored, so the next network
 * call sees them noised, as upstream. */
static int repaint_jump_back(Sampler *S, int s, int t, real *const z[3]) {
    size_t n = (size_t)S->NF * S->nf;
    float s2, st, at;
    oard_sigma_alpha_t_given_s(oard_gamma(&S->sch, t), oard_gamma(&S->sch, s), &s2, &st, &at);
    int rc = combined_noise(S, S->noise);
    if (rc) return rc;
    for (int f = 0; f < 3; f++) {
        for (size_t k = 0; k < n; k++) z[f][k] = (real)at * z[f][k] + (real)st * S->noise[f][k];
        centre_fragment(z[f], S->nf, S->frag_off, S->B);
    }
    return OARD_OK;
}

int oard_inpaint(const oard_model *m, const oard_batch *batch, const oard_sampler_opts *o, const oard_real *cond,
                 const oard_real *const xh_fixed[], oard_real *const out[], oard_rng *rng, char *err) {
    Sampler S;
    int rc = sampler_init(&S, m, batch, o, 1, cond, rng, err);
    real *z[3] = {NULL, NULL, NULL}, *known[3] = {NULL, NULL, NULL}, *x0[3] = {NULL, NULL, NULL};
    size_t n = (size_t)S.NF * S.nf;
    int resamplings = (o && o->resamplings > 0) ? o->resamplings : 1;
    int jump = (o && o->jump_length > 0) ? o->jump_length : 1;
    int *segs = NULL, n_segs = 0;
    for (int f = 0; !rc && f < 3; f++) {
        z[f] = xcalloc(n, sizeof(real));
        known[f] = xcalloc(n, sizeof(real));
        x0[f] = xcalloc(n, sizeof(real));
        if (!z[f] || !known[f] || !x0[f]) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
    }
    if (!rc) rc = repaint_segments(resamplings, jump, S.sch.T, &segs, &n_segs, err);
    for (int f = 0; !rc && f < 3; f++) {
        if (!check_finite(xh_fixed[f], n)) rc = fail(err, OARD_ERR_NUMERIC, "inpaint input: fragment %d holds NaN or Inf", f);
        /* h0 = features as integers (upstream .long()), positions centred per sample */
        for (size_t i = 0; i < n; i++) S.h0[f][i] = (i % S.nf) < 3 ? xh_fixed[f][i] : (real)(long long)xh_fixed[f][i];
        memcpy(x0[f], xh_fixed[f], n * sizeof(real));
        centre_fragment(x0[f], S.nf, S.frag_off, S.B);
    }
    if (!rc) rc = combined_noise(&S, z);
    if (!rc) restore_features(&S, z);
    /* Algorithm 1: segment i denoises segs[i] levels; between segments, a jump back */
    int s = S.sch.T - 1, done = 0, total = 0;
    for (int i = 0; !rc && i < n_segs; i++) total += segs[i];
    for (int i = 0; !rc && i < n_segs; i++)
        for (int j = 0; !rc && j < segs[i]; j++) {
            rc = repaint_step(&S, s, z, known, x0);
            if (!rc && j == segs[i] - 1 && i < n_segs - 1) {
                rc = repaint_jump_back(&S, s, s + jump, z);
                s += jump;
            }
            s--;
            done++;
            if (!rc && o && o->progress) o->progress(o->progress_ctx, done, total);
        }
    if (!rc) rc = p_xh_given_z0(&S, z, out);
    if (!rc) rc = check_samples(&S, out, "final step");
    for (int f = 0; f < 3; f++) {
        free(z[f]);
        free(known[f]);
        free(x0[f]);
    }
    free(segs);
    sampler_free(&S);
    return rc;
}

/* ------------------------------------------------------------------------------------ */
/* React-OT: the optimal-transport bridge                                                  */
/*
 * React-OT (Duan et al., Nat. Mach. Intell. 2025; github.com/deepprinciple/react-ot
 * a1fa217) keeps the object-aware LEFTNet denoiser and its three objects, but replaces the
 * diffusion by a deterministic Schrodinger-bridge / optimal-transport path between
 * x0 = the TS and x1 = the midpoint of R and P: x_t = mu_x0[t] x0 + mu_x1[t] x1 (ot_ode,
 * no noise). The network, fed the TS positions at x_t and its time t/T, predicts
 * (x_t - x0) / std_fwd[t]. Sampling starts at the midpoint and integrates towards t = 0
 * (EnSB.sample); golden_ot/README.md states upstream's formulas and call order.
 */

/* torch.linspace(start, end, n) in float64: the first half from start, the second from end */
static void torch_linspace(double start, double end, int n, double *y) {
    double step = n > 1 ? (end - start) / (n - 1) : 0;
    for (int i = 0; i < n; i++) y[i] = i < n / 2 ? start + step * i : end - step * (n - 1 - i);
}

/* SBSchedule.__init__ (reactot/diffusion/_schedule.py, float64 NumPy): a symmetric beta
 * schedule, the forward and backward standard deviations and the Gaussian-product
 * coefficients of the bridge, stored as float32 tensors as upstream does. */
int oard_sb_schedule_init(oard_sb_schedule *s, int T, double beta_max, double power, double inv_power, char *err) {
    memset(s, 0, sizeof(*s));
    if (!sb_params_ok(T, beta_max, power, inv_power))
        return fail(err, OARD_ERR_ARG, "bridge schedule: timesteps %d, beta_max %g, power %g, inv_power %g (an even number "
                    "2..1000000 of timesteps and positive values needed)", T, beta_max, power, inv_power);
    s->T = T; s->beta_max = beta_max; s->power = power; s->inv_power = inv_power;
    double **d[7] = {&s->f64_b, &s->f64_betas, &s->f64_std_fwd, &s->f64_std_bwd, &s->f64_mu_x0, &s->f64_mu_x1, &s->f64_var};
    float **f[6] = {&s->betas, &s->std_fwd, &s->std_bwd, &s->std_sb, &s->mu_x0, &s->mu_x1};
    for (int k = 0; k < 7; k++)
        if (!(*d[k] = xcalloc((size_t)T, sizeof(double)))) break;
    for (int k = 0; k < 6; k++)
        if (!(*f[k] = xcalloc((size_t)T, sizeof(float)))) break;
    if (!s->f64_var || !s->mu_x1) {
        oard_sb_schedule_free(s);
        return fail(err, OARD_ERR_NOMEM, "bridge schedule: out of memory");
    }
    /* make_beta_schedule: linspace(1e-4^inv_power, (beta_max/T)^inv_power, T)^power
     * (torch's pow with exponent 0.5 is a square root) */
    double *b = s->f64_b, maxb = 0;
    torch_linspace(pow(1e-4, inv_power), pow(beta_max / T, inv_power), T, b);
    for (int i = 0; i < T; i++) b[i] = power == 0.5 ? sqrt(b[i]) : pow(b[i], power);
    /* symmetric: the first half, then the first half reversed */
    for (int i = 0; i < T; i++) s->f64_betas[i] = b[i < T / 2 ? i : T - 1 - i];
    for (int i = 0; i < T; i++) maxb = fmax(maxb, s->f64_betas[i]);
    double scale = beta_max / T / maxb, fwd = 0, bwd = 0;
    for (int i = 0; i < T; i++) s->f64_betas[i] = scale * s->f64_betas[i] * 0.5;
    for (int i = 0; i < T; i++) { /* cumulative sums from the start and from the end */
        fwd += s->f64_betas[i]; bwd += s->f64_betas[T - 1 - i];
        s->f64_std_fwd[i] = sqrt(fwd); s->f64_std_bwd[T - 1 - i] = sqrt(bwd);
    }
    for (int i = 0; i < T; i++) { /* compute_gaussian_product_coef(std_fwd, std_bwd) */
        double f2 = s->f64_std_fwd[i] * s->f64_std_fwd[i], b2 = s->f64_std_bwd[i] * s->f64_std_bwd[i], den = f2 + b2;
        s->f64_mu_x0[i] = b2 / den; s->f64_mu_x1[i] = f2 / den; s->f64_var[i] = f2 * b2 / den;
        s->betas[i] = (float)s->f64_betas[i]; s->std_fwd[i] = (float)s->f64_std_fwd[i];
        s->std_bwd[i] = (float)s->f64_std_bwd[i]; s->std_sb[i] = (float)sqrt(s->f64_var[i]);
        s->mu_x0[i] = (float)s->f64_mu_x0[i]; s->mu_x1[i] = (float)s->f64_mu_x1[i];
    }
    return OARD_OK;
}

void oard_sb_schedule_free(oard_sb_schedule *s) {
    double *d[7] = {s->f64_b, s->f64_betas, s->f64_std_fwd, s->f64_std_bwd, s->f64_mu_x0, s->f64_mu_x1, s->f64_var};
    float *f[6] = {s->betas, s->std_fwd, s->std_bwd, s->std_sb, s->mu_x0, s->mu_x1};
    for (int k = 0; k < 7; k++) free(d[k]);
    for (int k = 0; k < 6; k++) free(f[k]);
    memset(s, 0, sizeof(*s));
}

/* space_indices(n, c) (EnSB): repeated float addition of the stride, Python's round (half
 * to even: 1559.5 -> 1560, but the sum reaches 1559.4999...) */
void oard_space_indices(int n, int c, int *out) {
    double stride = c > 1 ? (double)(n - 1) / (c - 1) : 0, cur = 0;
    for (int i = 0; i < c; i++, cur += stride) out[i] = (int)nearbyint(cur);
}

/* The step list of ddpm / ode (nfe + 1 entries) and whether pair i (steps[i-1], steps[i])
 * is logged: its step is in log_steps (space_indices(nfe, min(nfe, 10)) of the list) or it
 * is the last pair. EI logs its own way (ei_logged). */
static int bridge_logged_pair(const int *steps, int nfe, int i) {
    int nlog = nfe < 10 ? nfe : 10, idx[10];
    oard_space_indices(nfe, nlog, idx);
    for (int k = 0; k < nlog; k++)
        if (steps[idx[k]] == steps[i]) return 1;
    return steps[i - 1] == 0;
}

/* EI_sampling: step idx is logged when it is in linspace(0, nfe-1, min(nfe, 10)).astype(int) */
static int ei_logged(int nfe, int idx) {
    int nlog = nfe < 10 ? nfe : 10;
    double step = nlog > 1 ? (double)(nfe - 1) / (nlog - 1) : 0;
    for (int k = 0; k < nlog; k++) { /* numpy: k * step + start, the last point exactly stop */
        double v = k == nlog - 1 ? nfe - 1 : k * step;
        if ((int)v == idx) return 1;
    }
    return 0;
}

int oard_bridge_n_logged(const oard_bridge_opts *o, int T) {
    int nfe = o && o->nfe > 0 ? o->nfe : 10, n = 0;
    if (nfe >= T) return 0;
    if (o && o->solver == OARD_SOLVER_EI) {
        for (int i = 0; i < nfe; i++) n += ei_logged(nfe, i);
        return n;
    }
    int *steps = xcalloc((size_t)nfe + 1, sizeof(int));
    if (!steps) return 0;
    oard_space_indices(T, nfe + 1, steps);
    for (int i = nfe; i >= 1; i--) n += bridge_logged_pair(steps, nfe, i);
    free(steps);
    return n;
}

/* the float32 coefficients of p_posterior (compute_gaussian_product_coef(std_prev,
 * std_delta)) for the step from n to nprev, as upstream forms them on its float32 table */
NO_FMA_FN static void sb_posterior_coef(float std_n, float std_prev, float *mu_x0, float *mu_xn) {
    float sd = sqrtf(std_n * std_n - std_prev * std_prev), sd2 = sd * sd, sp2 = std_prev * std_prev, den = sp2 + sd2;
    *mu_x0 = sd2 / den; *mu_xn = sp2 / den;
}

typedef struct {
    const oard_model *m;
    oard_workspace *ws;
    oard_sb_schedule sch;
    const real *cond;
    char *err;
    int B, NF, nf;
    int *frag_off;
    real *z[3], *eps[3]; /* the network's input (TS positions set per call) and output */
    real *t;             /* (B) */
    real *out, *xmid, *pred, *fv, *fv_prev; /* (NF, 3) */
    int calls;
} Bridge;

static void bridge_free(Bridge *S) {
    for (int f = 0; f < 3; f++) { free(S->z[f]); free(S->eps[f]); }
    free(S->t); free(S->out); free(S->xmid); free(S->pred); free(S->fv); free(S->fv_prev); free(S->frag_off);
    oard_workspace_free(S->ws);
    oard_sb_schedule_free(&S->sch);
}

static int bridge_init(Bridge *S, const oard_model *m, const oard_batch *batch, const real *cond, const real *const xh[],
                       char *err) {
    const oard_config *c = &m->cfg;
    memset(S, 0, sizeof(*S));
    if (c->kind != OARD_KIND_DENOISER || c->objective != OARD_OBJECTIVE_BRIDGE)
        return fail(err, OARD_ERR_MODEL, "the bridge sampler needs a bridge (React-OT) model");
    if (!batch || batch->n_samples <= 0 || !batch->sizes) return fail(err, OARD_ERR_ARG, "bridge: no samples");
    S->m = m; S->cond = cond; S->err = err; S->B = batch->n_samples; S->nf = c->node_nfs[0];
    int rc = batch_offsets(batch, "bridge", &S->frag_off, err);
    if (rc) return rc;
    S->NF = S->frag_off[S->B];
    rc = oard_sb_schedule_init(&S->sch, c->sb_timesteps, c->sb_beta_max, c->sb_power, c->sb_inv_power, err);
    if (!rc) rc = oard_workspace_new(m, batch, 0, &S->ws, err);
    if (rc) return rc;
    size_t n = (size_t)S->NF * S->nf, n3 = (size_t)S->NF * 3;
    for (int f = 0; f < 3; f++) {
        S->z[f] = xcalloc(n, sizeof(real));
        S->eps[f] = xcalloc(n, sizeof(real));
        if (!S->z[f] || !S->eps[f]) return fail(err, OARD_ERR_NOMEM, "out of memory");
        if (!check_finite(xh[f], n)) return fail(err, OARD_ERR_NUMERIC, "bridge input: fragment %d holds NaN or Inf", f);
        memcpy(S->z[f], xh[f], n * sizeof(real));
    }
    S->t = xcalloc((size_t)S->B, sizeof(real));
    real **bufs[5] = {&S->out, &S->xmid, &S->pred, &S->fv, &S->fv_prev};
    for (int k = 0; k < 5; k++)
        if (!(*bufs[k] = xcalloc(n3, sizeof(real)))) return fail(err, OARD_ERR_NOMEM, "out of memory");
    if (!S->t) return fail(err, OARD_ERR_NOMEM, "out of memory");
    return OARD_OK;
}

/* x1 = (R + P) / 2, re-centred per sample over the TS atoms (sample_batch, mapping_initial RP) */
static void bridge_midpoint(const Bridge *S, real *x1) {
    for (int i = 0; i < S->NF; i++)
        for (int k = 0; k < 3; k++)
            x1[3 * i + k] = (S->z[0][(size_t)i * S->nf + k] + S->z[2][(size_t)i * S->nf + k]) / 2;
    centre_fragment(x1, 3, S->frag_off, S->B);
}

/* One network call as the samplers make it: the TS positions set to xt, time tval for every
 * sample; out = the TS fragment's position output (upstream's net_out, out[1][:, :3]). */
static int bridge_net_out(Bridge *S, const real *xt, real tval, real *out) {
    for (int i = 0; i < S->NF; i++)
        for (int k = 0; k < 3; k++) S->z[1][(size_t)i * S->nf + k] = xt[3 * i + k];
    for (int b = 0; b < S->B; b++) S->t[b] = tval;
    const real *zin[3] = {S->z[0], S->z[1], S->z[2]};
    int rc = denoise_run(S->ws, zin, S->t, S->cond, S->eps, NULL, NULL, S->err);
    for (int i = 0; !rc && i < S->NF; i++)
        for (int k = 0; k < 3; k++) out[3 * i + k] = S->eps[1][(size_t)i * S->nf + k];
    S->calls++;
    return rc;
}

#define BRIDGE_CLAMP 10 /* clip_denoise: pred_x0.clamp_(-10, 10), Angstrom, per coordinate */

/* pred_x0 = clamp(xt - std_fwd[step] * net_out(xt, step / T)) (compute_pred_x0) */
static int bridge_pred_x0(Bridge *S, const real *xt, int step, real *pred) {
    int rc = bridge_net_out(S, xt, (real)step / (real)S->sch.T, S->out);
    const real sf = (real)S->sch.std_fwd[step];
    for (size_t j = 0; !rc && j < (size_t)S->NF * 3; j++) {
        real p = xt[j] - sf * S->out[j];
        pred[j] = p > BRIDGE_CLAMP ? BRIDGE_CLAMP : p < -BRIDGE_CLAMP ? -BRIDGE_CLAMP : p;
    }
    return rc;
}

/* ddpm_sampling, ot_ode: one p_posterior step from n = step to nprev = prev, deterministic */
static int bridge_ddpm_step(Bridge *S, int prev, int step, real *xt) {
    int rc = bridge_pred_x0(S, xt, step, S->pred);
    if (rc) return rc;
    float c0, cn;
    sb_posterior_coef(S->sch.std_fwd[step], S->sch.std_fwd[prev], &c0, &cn);
    for (size_t j = 0; j < (size_t)S->NF * 3; j++) xt[j] = (real)c0 * S->pred[j] + (real)cn * xt[j];
    return OARD_OK;
}

/* the probability-flow ODE's right-hand side f(t, x) = net_out(x, t) sqrt(beta / t), with
 * torchdiffeq's reversal for a decreasing span: g(s, x) = -f(-s, x). beta is float32. */
static int bridge_ode_rhs(Bridge *S, real s, const real *x, real *g) {
    const real t = -s;
    int rc = bridge_net_out(S, x, t, S->out);
    const real scale = RSQRT((real)(float)(S->sch.betas[0] * (float)S->sch.T) / t);
    for (size_t j = 0; !rc && j < (size_t)S->NF * 3; j++) g[j] = -(S->out[j] * scale);
    return rc;
}

/* ode_sampling: odeint over [step/T, max(1e-5, prev/T)] with one fixed-grid step
 * (torchdiffeq Euler: y + dt g(t0, y); Midpoint: y + dt g(t0 + dt/2, y + g(t0, y) dt/2)),
 * in negated time t0 = -step/T, dt = -t1 - t0 */
static int bridge_ode_step(Bridge *S, int method, int prev, int step, real *xt) {
    const real t0 = -(real)((double)step / S->sch.T), t1 = -(real)fmax(1e-5, (double)prev / S->sch.T), dt = t1 - t0;
    const size_t n3 = (size_t)S->NF * 3;
    real *g = S->fv;
    int rc = bridge_ode_rhs(S, t0, xt, g);
    if (rc) return rc;
    if (method == OARD_ODE_EULER) {
        for (size_t j = 0; j < n3; j++) xt[j] = xt[j] + dt * g[j];
        return OARD_OK;
    }
    const real half = (real)0.5 * dt;
    for (size_t j = 0; j < n3; j++) S->xmid[j] = xt[j] + g[j] * half;
    rc = bridge_ode_rhs(S, t0 + half, S->xmid, g);
    for (size_t j = 0; !rc && j < n3; j++) xt[j] = xt[j] + dt * g[j];
    return rc;
}

/* EI_sampling, order 1, linear discretisation: s = linspace(1, 0, nfe + 1) (numpy),
 * t_i = s[i], dt_i = s[i] - s[i+1], network step round(t_i (T - 1)) (half to even).
 * fv = (xt - pred_x0) / t_i; xt += c0 fv + c1 fv_prev, with the Adams-Bashforth
 * coefficients: the Lagrange basis of the nodes t_i, t_{i-1} integrated over [t_i, t_i - dt_i]
 * (upstream sums it by a 10,000-point average; exact here: c0 = -dt - dt^2/(2h),
 * c1 = dt^2/(2h), h = t_{i-1} - t_i; c0 = -dt at the first step). */
static void ei_grid(int nfe, int i, double *t, double *dt) {
    double step = -1.0 / nfe; /* numpy linspace: k * step + start */
    double s0 = i * step + 1, s1 = i + 1 == nfe ? 0 : (i + 1) * step + 1;
    *t = s0; *dt = s0 - s1;
}

static int bridge_ei_step(Bridge *S, int nfe, int idx, real *xt, int *step_out) {
    double t, dt, tp, dtp;
    ei_grid(nfe, idx, &t, &dt);
    int step = (int)nearbyint(t * (S->sch.T - 1));
    *step_out = step;
    int rc = bridge_pred_x0(S, xt, step, S->pred);
    if (rc) return rc;
    double c0 = -dt, c1 = 0;
    if (idx > 0) {
        ei_grid(nfe, idx - 1, &tp, &dtp);
        double h = tp - t;
        c0 = -dt - dt * dt / (2 * h); c1 = dt * dt / (2 * h);
    }
    for (size_t j = 0; j < (size_t)S->NF * 3; j++) {
        real f = (xt[j] - S->pred[j]) / (real)t;
        xt[j] = xt[j] + (real)c0 * f + (idx > 0 ? (real)c1 * S->fv_prev[j] : 0);
        S->fv_prev[j] = f;
    }
    return OARD_OK;
}

static int bridge_check(const Bridge *S, const real *xt) {
    for (int i = 0; i < S->NF; i++)
        for (int k = 0; k < 3; k++)
            if (!isfinite(xt[3 * i + k])) {
                int b = 0;
                while (b + 1 < S->B && i >= S->frag_off[b + 1]) b++;
                return fail(S->err, OARD_ERR_NUMERIC, "NaN/Inf in the bridge trajectory of sample %d", b);
            }
    return OARD_OK;
}

/* store state k of n_logged into out (NF, n_logged, 3) at upstream's position: the list
 * is flipped, so the k-th logged state lands at n_logged - 1 - k */
static void bridge_log(const Bridge *S, const real *x, int k, int n_logged, real *out) {
    if (!out) return;
    for (int i = 0; i < S->NF; i++)
        memcpy(out + ((size_t)i * n_logged + (n_logged - 1 - k)) * 3, x + 3 * i, 3 * sizeof(real));
}

/* The solver's preconditions: nfe below T, and for the ode solver a constant beta schedule
 * (upstream's ode_sampling asserts it). */
static int bridge_check_solver(const Bridge *S, int solver, int nfe, char *err) {
    const int T = S->sch.T;
    if (nfe >= T) return fail(err, OARD_ERR_ARG, "bridge: nfe %d must be below the schedule's %d timesteps", nfe, T);
    for (int i = 1; solver == OARD_SOLVER_ODE && i < T; i++)
        if (fabsf(S->sch.betas[i] - S->sch.betas[i - 1]) > 1e-8f + 1e-5f * fabsf(S->sch.betas[i]))
            return fail(err, OARD_ERR_MODEL, "bridge: the ode solver needs a constant beta schedule (upstream asserts it); "
                                             "use --solver ddpm or ei with this model");
    return OARD_OK;
}

/* Step k of nfe: ddpm and ode move xt from steps[i] to steps[i - 1], i = nfe - k (the
 * pairs from the end of the grid); ei takes its own grid's step k. *logged: whether
 * upstream keeps this step in its trajectory. Then xt is centred and checked. */
static int bridge_step(Bridge *S, int solver, int method, const int *steps, int nfe, int k, real *xt, int *logged) {
    int rc, i = nfe - k, step;
    if (solver == OARD_SOLVER_EI) {
        rc = bridge_ei_step(S, nfe, k, xt, &step);
        *logged = ei_logged(nfe, k);
    } else {
        rc = solver == OARD_SOLVER_DDPM ? bridge_ddpm_step(S, steps[i - 1], steps[i], xt)
                                        : bridge_ode_step(S, method, steps[i - 1], steps[i], xt);
        *logged = bridge_logged_pair(steps, nfe, i);
    }
    if (rc) return rc;
    centre_fragment(xt, 3, S->frag_off, S->B);
    return bridge_check(S, xt);
}

int oard_bridge_sample(const oard_model *m, const oard_batch *batch, const oard_bridge_opts *o, const oard_real *cond,
                       const oard_real *const xh[], oard_real *ts_pos, oard_real *xs, oard_real *pred_x0s, char *err) {
    const int solver = o ? o->solver : OARD_SOLVER_ODE, method = o ? o->ode_method : OARD_ODE_MIDPOINT;
    const int nfe = o && o->nfe > 0 ? o->nfe : 10;
    if (solver < OARD_SOLVER_ODE || solver > OARD_SOLVER_EI || method < OARD_ODE_MIDPOINT || method > OARD_ODE_EULER)
        return fail(err, OARD_ERR_ARG, "bridge: unknown solver %d or ODE method %d", solver, method);
    Bridge S;
    int rc = bridge_init(&S, m, batch, cond, xh, err);
    const int T = S.sch.T;
    if (!rc) rc = bridge_check_solver(&S, solver, nfe, err);
    int *steps = rc ? NULL : xcalloc((size_t)nfe + 1, sizeof(int));
    real *xt = rc ? NULL : xcalloc((size_t)S.NF * 3, sizeof(real));
    if (!rc && (!steps || !xt)) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
    const int n_logged = rc ? 0 : oard_bridge_n_logged(o, T);
    int logged = 0;
    if (!rc) { /* the time grid; x_T = the R-P midpoint */
        oard_space_indices(T, nfe + 1, steps);
        bridge_midpoint(&S, xt);
    }
    for (int k = 0; !rc && k < nfe; k++) {
        int log_it = 0;
        rc = bridge_step(&S, solver, method, steps, nfe, k, xt, &log_it);
        if (!rc && log_it && logged < n_logged) {
            bridge_log(&S, xt, logged, n_logged, xs);
            bridge_log(&S, solver == OARD_SOLVER_ODE ? xt : S.pred, logged, n_logged, pred_x0s);
            logged++;
        }
        if (!rc && o && o->progress) o->progress(o->progress_ctx, k + 1, nfe);
    }
    if (!rc) memcpy(ts_pos, xt, (size_t)S.NF * 3 * sizeof(real));
    free(steps);
    free(xt);
    bridge_free(&S);
    return rc;
}

/* ------------------------------------------------------------------------------------ */
/* Training: upstream's loss and its gradient (the backward pass)                         */
/*
 * oard_train_loss computes what upstream's DDPMModule.compute_loss minimises in training
 * mode (loss_type "l2"), and its gradient with respect to every parameter. It runs one
 * sample (reaction) at a time: a forward pass that keeps the activations the backward
 * pass needs (the "tape", Tape below), in the same order and with the same kernels as
 * leftnet_forward, then one *_backward function per layer function, in reverse.
 *
 * Conventions. Gradients have the layout of the parameter arena: the gradient of the
 * parameter at m->params + k is G[k] (gslot). A backward function receives the gradient of
 * its outputs, adds the gradients of its parameters into G, and returns (or adds, where
 * the forward input feeds several places) the gradient of its inputs. Positions are
 * inputs: the geometry (mask, frames, RBF, node frames) carries no gradient.
 */

/* A Linear's weight in upstream's (out, in) layout, rows ldb >= in apart: the backward
 * pass's dx = dy W then runs through the same matmul kernel as the forward. */
typedef struct {
    size_t off, len;  /* the transposed weight's place in the arena */
    int ld, ldb;
    const real *wb;   /* (out, ldb) */
} BackW;

typedef struct {
    const oard_model *m;
    real *G;          /* gradient, arena layout */
    const BackW *bw;  /* every Linear weight, by arena offset */
    int n_bw;
    real *xT, *dyb;   /* scratch: (unused), a block of a layer's output gradient padded */
} Grad;

#define BACK_ROWS 256 /* rows per block of the weight gradient */

static real *gslot(const Grad *sink, const real *p) { return sink->G + (p - sink->m->params); }

/* W (out, in) of the Linear whose transposed weight starts at wt (or a block of its input
 * rows, as linear_block makes): a pointer to its first column, and the row length */
static const real *back_weight(const Grad *sink, const real *wt, int *ldb) {
    size_t off = (size_t)(wt - sink->m->params);
    int lo = 0, hi = sink->n_bw - 1;
    while (lo < hi) { /* the last entry with bw.off <= off */
        int mid = (lo + hi + 1) / 2;
        if (sink->bw[mid].off <= off) lo = mid;
        else hi = mid - 1;
    }
    const BackW *b = &sink->bw[lo];
    *ldb = b->ldb;
    return b->wb + (off - b->off) / (size_t)b->ld;
}

/* the upstream-layout copies of every Linear weight of m (one allocation, freed with free) */
static BackW *back_weights(const oard_model *m, int *n, real **block) {
    int cnt = 0;
    size_t total = 0;
    for (int i = 0; i < m->file.n_t; i++)
        if (m->file.t[i].ld) { cnt++; total += (size_t)m->file.t[i].dims[0] * round_up((size_t)m->file.t[i].dims[1], TILE_N) + TILE_N; }
    /* rows of ldb values: whole column tiles, except narrow inputs (< VW), which matmul reads unpadded */
    BackW *bw = xcalloc((size_t)cnt + 1, sizeof(BackW));
    real *wb = aligned_calloc(total + 1, sizeof(real));
    if (!bw || !wb) {
        free(bw); aligned_free(wb);
        return NULL;
    }
    int k = 0;
    size_t pos = 0;
    for (int i = 0; i < m->file.n_t; i++) {
        const wtensor *t = &m->file.t[i];
        if (!t->ld) continue;
        size_t out = (size_t)t->dims[0], in = (size_t)t->dims[1], ldb = in < (size_t)VW ? in : round_up(in, TILE_N);
        const real *w = m->params + t->arena_off;
        real *dst = wb + pos;
        for (size_t o = 0; o < out; o++)
            for (size_t c = 0; c < in; c++) dst[o * ldb + c] = w[c * (size_t)t->ld + o];
        bw[k].off = t->arena_off; bw[k].len = in * (size_t)t->ld; bw[k].ld = t->ld; bw[k].ldb = (int)ldb; bw[k].wb = dst;
        k++;
        pos += out * ldb + TILE_N;
    }
    for (int a = 1; a < k; a++) /* by arena offset (insertion sort: a few hundred entries) */
        for (int b = a; b > 0 && bw[b - 1].off > bw[b].off; b--) {
            BackW tmp = bw[b];
            bw[b] = bw[b - 1]; bw[b - 1] = tmp;
        }
    *n = k;
    *block = wb;
    return bw;
}

/* SiLU in training: y[i] = a[i] + SiLU(x[i]) (a NULL: y[i] = SiLU(x[i])), and x[i]
 * replaced by SiLU'(x[i]) = s (1 + x (1 - s)), with s = sigmoid(x) = 1 / (1 + exp(-x)) and
 * SiLU(x) = x s: one exponential and one division for both. The derivative is all the
 * backward pass needs of a pre-activation, so it needs no exponential of its own. (x s
 * may differ from the inference's x / (1 + exp(-x)) in the last bit.) One loop the
 * compiler vectorises. */
NO_FMA_FN static inline ALWAYS_INLINE void silu_train_body(const real *a, real *x, real *y, size_t n, const int sleef) {
    if (a)
        for (size_t i = 0; i < n; i++) {
            const real xi = x[i], s = (real)1 / ((real)1 + KP_EXP(sleef, -xi));
            y[i] = a[i] + xi * s;
            x[i] = s * ((real)1 + xi * ((real)1 - s));
        }
    else
        for (size_t i = 0; i < n; i++) {
            const real xi = x[i], s = (real)1 / ((real)1 + KP_EXP(sleef, -xi));
            y[i] = xi * s;
            x[i] = s * ((real)1 + xi * ((real)1 - s));
        }
}
#ifdef OARD_DISPATCH
TARGET_AVX2 NO_FMA_FN static void silu_train_avx2(const real *a, real *x, real *y, size_t n) {
    silu_train_body(a, x, y, n, KP_SLEEF);
}
TARGET_AVX512 NO_FMA_FN static void silu_train_avx512(const real *a, real *x, real *y, size_t n) {
    silu_train_body(a, x, y, n, KP_SLEEF);
}
#endif
NO_FMA_FN static void silu_train(const real *a, real *x, real *y, size_t n) {
#ifdef OARD_DISPATCH
    if (kernel_path == KP_AVX512) silu_train_avx512(a, x, y, n);
    else if (kernel_path == KP_AVX2) silu_train_avx2(a, x, y, n);
    else
#endif
        silu_train_body(a, x, y, n, KP_BASE_SLEEF);
}

/* SiLU'(x) from the pre-activation itself (where x must be kept: the scalar attention,
 * CFConvS2V's LayerNorm output) */
NO_FMA_FN static inline real dsilu(real x) {
    real s = (real)1 / ((real)1 + SILU_EXP(-x));
    return s * ((real)1 + x * ((real)1 - s));
}
NO_FMA_FN static void silu_backward_pre(const real *pre, real *d, size_t n) {
    for (size_t i = 0; i < n; i++) {
        real s = (real)1 / ((real)1 + SILU_EXP(-pre[i]));
        d[i] *= s * ((real)1 + pre[i] * ((real)1 - s));
    }
}

/* out[i] = d[i] SiLU'(x[i]) over n values (out may be d): backward of y = SiLU(x), with
 * dact = SiLU'(x) as silu_train left it */
static void silu_backward_to(const real *dact, const real *d, real *out, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = d[i] * dact[i];
}
static void silu_backward(const real *dact, real *d, size_t n) { silu_backward_to(dact, d, d, n); }

/* linear_forward that keeps what its backward needs: pre = x W^T + b; with act,
 * y = SiLU(pre) and pre replaced by SiLU'(pre) (silu_train), else y a copy of pre */
static void linear_train(const Linear *L, const real *x, size_t rows, real *pre, real *y, int act) {
    linear_forward(L, x, rows, pre, 0);
    if (act) silu_train(NULL, pre, y, rows * (size_t)L->out);
    else if (y && y != pre) memcpy(y, pre, rows * (size_t)L->out * sizeof(real));
}

/* Backward of y = x W^T + b over rows: dW += dy^T x, db += sum of dy, and dx = dy W
 * (added to dx when acc, skipped when dx is NULL). Both products run through the matmul
 * kernel: dW^T += x^T dy on blocks of rows (matmul_tn, x read in place), dx with W in
 * upstream's layout (back_weight). */
static void linear_backward(const Grad *sink, const Linear *L, const real *x, const real *dy, size_t rows, real *dx,
                            int acc) {
    const int in = L->in, out = L->out;
    real *gw = gslot(sink, L->wt), *gb = L->b ? gslot(sink, L->b) : NULL;
    /* dy is read as W: in place when its rows are whole vectors (every tile complete), else
     * copied into whole column tiles, zero padded */
    const int direct = out < VW || out % VW == 0;
    const size_t ldd = direct ? (size_t)out : round_up((size_t)out, TILE_N);
    for (size_t r0 = 0; r0 < rows; r0 += BACK_ROWS) {
        size_t rb = rows - r0 < BACK_ROWS ? rows - r0 : BACK_ROWS;
        const real *db = dy + r0 * (size_t)out;
        if (!direct) {
            for (size_t r = 0; r < rb; r++) {
                memcpy(sink->dyb + r * ldd, dy + (r0 + r) * (size_t)out, (size_t)out * sizeof(real));
                memset(sink->dyb + r * ldd + out, 0, (ldd - (size_t)out) * sizeof(real));
            }
            db = sink->dyb;
        }
        matmul_tn(gw, (size_t)L->ldw, x + r0 * (size_t)in, (size_t)in, db, ldd, (int)rb, out, (size_t)in);
    }
    if (gb)
        for (size_t r = 0; r < rows; r++)
            for (int o = 0; o < out; o++) gb[o] += dy[r * (size_t)out + o];
    if (dx) {
        int ldb;
        const real *wb = back_weight(sink, L->wt, &ldb);
        matmul(dx, (size_t)in, dy, (size_t)out, wb, (size_t)ldb, NULL, out, in, rows, acc);
    }
}

/* LayerNorm that keeps xhat = (x - mean) / sqrt(var + eps) and rstd = 1 / sqrt(var + eps)
 * (same arithmetic as layernorm_forward) */
static void layernorm_train(const real *x, size_t rows, int n, const real *w, const real *b, real *y, real *xhat,
                            real *rstd) {
    for (size_t r = 0; r < rows; r++) {
        const real *xr = x + r * (size_t)n;
        real *yr = y + r * (size_t)n, *hr = xhat + r * (size_t)n;
        double mean = 0, var = 0;
        for (int i = 0; i < n; i++) mean += xr[i];
        mean /= n;
        for (int i = 0; i < n; i++) var += ((double)xr[i] - mean) * ((double)xr[i] - mean);
        var /= n;
        double inv = 1.0 / sqrt(var + 1e-5);
        rstd[r] = (real)inv;
        for (int i = 0; i < n; i++) {
            real v = (real)(((double)xr[i] - mean) * inv);
            hr[i] = v;
            yr[i] = w ? v * w[i] + b[i] : v;
        }
    }
}

/* Backward of LayerNorm: dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy w;
 * dw += dy xhat, db += dy. dx is overwritten (it may alias dy). */
static void layernorm_backward(const Grad *sink, const real *dy, const real *xhat, const real *rstd, size_t rows, int n,
                               const real *w, const real *b, real *dx) {
    real *gw = w ? gslot(sink, w) : NULL, *gb = b ? gslot(sink, b) : NULL;
    for (size_t r = 0; r < rows; r++) {
        const real *dr = dy + r * (size_t)n, *hr = xhat + r * (size_t)n;
        double mg = 0, mgh = 0;
        for (int i = 0; i < n; i++) {
            double gi = w ? (double)dr[i] * w[i] : dr[i];
            mg += gi;
            mgh += gi * hr[i];
            if (w) { gw[i] += dr[i] * hr[i]; gb[i] += dr[i]; }
        }
        mg /= n;
        mgh /= n;
        real *xr = dx + r * (size_t)n;
        for (int i = 0; i < n; i++) {
            double gi = w ? (double)dr[i] * w[i] : dr[i];
            xr[i] = (real)(rstd[r] * (gi - mg - hr[i] * mgh));
        }
    }
}

/* An MLP (core.py) that keeps every layer's pre-activation: pre (rows, sum of widths),
 * layer k's block at offset rows * (sum of earlier widths); y = the last layer's output. */
static void mlp_train(const MLP *m, const real *x, size_t rows, real *pre, real *act, real *y) {
    const real *in = x;
    size_t off = 0;
    for (int k = 0; k < m->n; k++) {
        int last = k == m->n - 1, a = last ? m->last_act : 1;
        real *o = last ? y : act + off;
        linear_train(&m->l[k], in, rows, pre + off, o, a);
        in = o;
        off += rows * (size_t)m->l[k].out;
    }
}

/* Backward of mlp_train: dy (rows, out) is consumed (used as scratch); dx = gradient of
 * x, added when acc; tmp holds 2 x rows x (widest layer). */
static void mlp_backward(const Grad *sink, const MLP *m, const real *x, size_t rows, const real *pre, const real *act,
                         real *dy, real *dx, int acc, real *tmp) {
    size_t offs[4] = {0}, wmax = 0;
    for (int k = 0; k < m->n; k++) {
        offs[k + 1] = offs[k] + rows * (size_t)m->l[k].out;
        if ((size_t)m->l[k].out > wmax) wmax = (size_t)m->l[k].out;
        if ((size_t)m->l[k].in > wmax) wmax = (size_t)m->l[k].in;
    }
    real *d = dy;
    for (int k = m->n - 1; k >= 0; k--) {
        int last = k == m->n - 1;
        if (!last || m->last_act) silu_backward(pre + offs[k], d, rows * (size_t)m->l[k].out);
        const real *in = k ? act + offs[k - 1] : x;
        real *dn = k ? tmp + ((m->n - k) % 2) * rows * wmax : dx;
        linear_backward(sink, &m->l[k], in, d, rows, dn, k ? 0 : acc);
        d = dn;
    }
}

/* lin3 per channel (lin3_channels) keeping the hidden pre-activations: z (width_k, H)
 * blocks one after the other, stride Hs per row. */
static void lin3_train(const Linear *l, int n_layers, const real *q, int H, real *out, real *z, real *a) {
    const size_t Hs = round_up((size_t)H, 16);
    const real *in = q;
    size_t off = 0;
    for (int k = 0; k < n_layers; k++) {
        const Linear *L = &l[k];
        int last = k == n_layers - 1;
        for (int j = 0; j < L->out; j++) {
            real *zj = last ? out + (size_t)j * Hs : z + off + (size_t)j * Hs;
            for (int h = 0; h < H; h++) zj[h] = L->b[j];
            for (int i = 0; i < L->in; i++) {
                const real wv = L->wt[(size_t)i * L->ldw + j], *ii = in + (size_t)i * Hs;
                for (int h = 0; h < H; h++) zj[h] += ii[h] * wv;
            }
            if (!last) {
                real *aj = a + off + (size_t)j * Hs;
                silu_train(NULL, zj, aj, (size_t)H);
            }
        }
        if (!last) { in = a + off; off += (size_t)L->out * Hs; }
    }
}

/* Backward of lin3_train: dout (H) -> dq (3 rows of Hs; NULL: not wanted), and the
 * parameters' gradients per channel, added to acc (lin3_acc_rows rows of Hs, reduced over
 * the channels into the gradient by lin3_reduce): the sums over channels and over the many
 * edges or nodes lin3 runs on are then vector adds, done once. t: scratch of
 * 2 x (widest) x Hs. */
static void lin3_backward(const Linear *l, int n_layers, const real *q, int H, const real *z, const real *a,
                          const real *dout, real *dq, real *t, real *acc) {
    const size_t Hs = round_up((size_t)H, 16);
    size_t offs[4] = {0}, aoff[4] = {0}, wmax = 3;
    for (int k = 0; k + 1 < n_layers; k++) offs[k + 1] = offs[k] + (size_t)l[k].out * Hs;
    for (int k = 0; k + 1 < n_layers; k++) aoff[k + 1] = aoff[k] + (size_t)(l[k].in + 1) * l[k].out * Hs;
    for (int k = 0; k < n_layers; k++)
        if ((size_t)l[k].out > wmax) wmax = (size_t)l[k].out;
    const real *d = dout;
    for (int k = n_layers - 1; k >= 0; k--) {
        const Linear *L = &l[k];
        const real *in = k ? a + offs[k - 1] : q;
        real *gw = acc + aoff[k], *gb = gw + (size_t)L->in * L->out * Hs; /* (in, out, Hs), (out, Hs) */
        real *dn = k ? t + ((n_layers - k) % 2) * wmax * Hs : dq;
        if (dn)
            for (int i = 0; i < L->in; i++) memset(dn + (size_t)i * Hs, 0, (size_t)H * sizeof(real));
        for (int j = 0; j < L->out; j++) {
            const real *dj = d + (size_t)j * Hs;
            real *bj = gb + (size_t)j * Hs;
            for (int h = 0; h < H; h++) bj[h] += dj[h];
            for (int i = 0; i < L->in; i++) {
                const real *ii = in + (size_t)i * Hs, wv = L->wt[(size_t)i * L->ldw + j];
                real *wij = gw + ((size_t)i * L->out + j) * Hs;
                for (int h = 0; h < H; h++) wij[h] += dj[h] * ii[h];
                if (dn) {
                    real *di = dn + (size_t)i * Hs;
                    for (int h = 0; h < H; h++) di[h] += dj[h] * wv;
                }
            }
        }
        if (k) { /* through the SiLU of layer k - 1 */
            const real *zk = z + offs[k - 1];
            for (int i = 0; i < L->in; i++)
                silu_backward(zk + (size_t)i * Hs, dn + (size_t)i * Hs, (size_t)H);
        }
        d = dn;
    }
}

/* the per-channel sums of lin3_backward added to the gradient (summed over the H
 * channels), and acc zeroed */
static void lin3_reduce(const Grad *sink, const Linear *l, int n_layers, int H, real *acc) {
    const size_t Hs = round_up((size_t)H, 16);
    real *p = acc;
    for (int k = 0; k < n_layers; k++) {
        const Linear *L = &l[k];
        real *gw = gslot(sink, L->wt), *gb = gslot(sink, L->b);
        for (int i = 0; i < L->in; i++)
            for (int j = 0; j < L->out; j++, p += Hs) {
                real sw = 0;
                for (int h = 0; h < H; h++) sw += p[h];
                gw[(size_t)i * L->ldw + j] += sw;
            }
        for (int j = 0; j < L->out; j++, p += Hs) {
            real sb = 0;
            for (int h = 0; h < H; h++) sb += p[h];
            gb[j] += sb;
        }
    }
    memset(acc, 0, (size_t)(p - acc) * sizeof(real));
}

/* The update's lin3 on all N nodes at once, for the training pass: activations channel
 * major, each row NH = N Hs long (node n's channels at n Hs, the padding zero), so that
 * each layer is one matrix product Z (out, NH) = W (out, in) IN (in, NH) + b (matmul_tn
 * reads W from the transposed weight). z, a: the hidden layers' pre-activations (SiLU'
 * once silu_train is done) and activations, layer after layer; out (1, NH). */
static void lin3_rows_train(const Linear *l, int n_layers, const real *q, size_t NH, real *out, real *z, real *a) {
    const real *in = q;
    size_t off = 0;
    for (int k = 0; k < n_layers; k++) {
        const Linear *L = &l[k];
        int last = k == n_layers - 1;
        real *o = last ? out : z + off;
        for (int j = 0; j < L->out; j++)
            for (size_t c = 0; c < NH; c++) o[(size_t)j * NH + c] = L->b[j];
        matmul_tn(o, NH, L->wt, (size_t)L->ldw, in, NH, L->in, (int)NH, (size_t)L->out);
        if (!last) {
            silu_train(NULL, o, a + off, (size_t)L->out * NH);
            in = a + off;
            off += (size_t)L->out * NH;
        }
    }
}

/* sum_k x[k] y[k], n a multiple of 16, with 16 partial sums (a loop the compiler vectorises) */
static real dot16(const real *x, const real *y, size_t n) {
    real acc[16] = {0}, s = 0;
    for (size_t k = 0; k < n; k += 16)
        for (int j = 0; j < 16; j++) acc[j] += x[k + j] * y[k + j];
    for (int j = 0; j < 16; j++) s += acc[j];
    return s;
}

/* Backward of lin3_rows_train: dout (1, NH, zero padding) -> dq (3, NH); the parameters'
 * gradients are sums over the NH columns (dot products). dh: scratch of the hidden
 * layers' gradients (as many rows as z). */
static void lin3_rows_backward(const Grad *sink, const Linear *l, int n_layers, const real *q, size_t NH, const real *z,
                               const real *a, const real *dout, real *dq, real *dh) {
    size_t offs[4] = {0};
    for (int k = 0; k + 1 < n_layers; k++) offs[k + 1] = offs[k] + (size_t)l[k].out * NH;
    const real *d = dout;
    for (int k = n_layers - 1; k >= 0; k--) {
        const Linear *L = &l[k];
        const real *in = k ? a + offs[k - 1] : q;
        real *gw = gslot(sink, L->wt), *gb = gslot(sink, L->b);
        for (int j = 0; j < L->out; j++) {
            const real *dj = d + (size_t)j * NH;
            real sb = 0;
            for (size_t c = 0; c < NH; c++) sb += dj[c];
            gb[j] += sb;
            for (int i = 0; i < L->in; i++) gw[(size_t)i * L->ldw + j] += dot16(in + (size_t)i * NH, dj, NH);
        }
        real *dn = k ? dh + offs[k - 1] : dq;
        matmul_cols(dn, NH, L->wt, (size_t)L->ldw, d, NH, NULL, L->out, (int)NH, (size_t)L->in, 0, 0, (int)NH);
        if (k) silu_backward(z + offs[k - 1], dn, (size_t)L->in * NH);
        d = dn;
    }
}

/* ---- the tape: what one sample's forward pass keeps for the backward pass ----
 * The pre-activation of every Linear followed by SiLU (the *_pre buffers, pre1, pre2,
 * out_pre, lin3's z) holds SiLU'(pre-activation) once the forward pass is done
 * (silu_train): that is all the backward pass reads of it. */

typedef struct {
    real *xhat, *rstd, *xh;             /* x_layernorm: (N, H), (N), (N, H) */
    real *A, *Bn;                       /* (N, H): edge_mlp's first layer, xh_i and xh_j blocks */
    real *pre1, *act1, *pre2, *m2;      /* (E, H): edge_mlp layers (pre-activation, SiLU) */
    real *att_pre, *m;                  /* (E), (E, H): attention pre-activation, m = m2 SiLU(att) */
    real *cat, *node_pre, *node_act;    /* (N, 2H), (N, 2H), (N, H): node_mlp on [xh, agg] */
    real *out_pre;                      /* (E, 3H + R): edge_out_trans pre-activation */
} TapeGCL;

typedef struct {
    real *xhat, *rstd, *xn, *x1_pre, *x1, *xh3; /* (N, H) x 5 but rstd (N); xh3 (N, 3H) */
    real *ewu, *rbfu;                           /* (U, 3H + R), (U, R): unmasked edges' inputs */
    real *dp_pre, *dp_act, *dp, *rp;            /* (U, 3H): dir_proj layers, rbf_proj */
    real *vec_in;                               /* (N, 3, H) */
} TapeMsg;

typedef struct {
    real *vec_in, *V;          /* (N, 3, H), (N, 3, 2H): vec_proj -> vec1, vec2 */
    real *q, *z, *a;           /* lin3 (lin3_rows_train), rows of N Hs: frame rows (3, before |.|), hidden pre / SiLU (56) */
    real *cat, *xv_pre, *xv, *X; /* (N, 2H) [s, scalar], (N, H) x 2, (N, 3H) */
    real *dyn_in, *dyn_pre, *dyn_act; /* pos_grad head: s (N, H), (N, H/2) x 2 */
} TapeUpd;

typedef struct {
    real *xin, *vin;              /* (N, hid), (N, 3, hid) */
    real *v1, *v2, *nrm, *cat;    /* (N, 3, hid), (N, 3, out), (N, hid), (N, 2 hid) */
    real *u_pre, *u_act, *u;      /* (N, hid) x 2, (N, 2 out) */
} TapeOut;

typedef struct {
    int N, E, U, NF;
    real *feat[3], *enc_pre[3], *enc_act[3]; /* encoders: (n, F) input, (n, 2F + Eemb) pre, (n, 2F) SiLU */
    real *h;                                 /* (N, I) LEFTNet input */
    real *rad_pre, *rad_act, *rad_g;         /* (E, H): radial_lin; f = rad_g * rbound */
    real *nb_u, *nb_un, *nb_rstd;            /* NeighborEmb: Linear(h), its LN0, 1/std */
    real *s0;                                /* (N, H) */
    real *sv_u, *sv_un, *sv_rstd, *sv_t;     /* CFConvS2V: Linear(s0), LN0, 1/std, SiLU */
    real *ne1;                               /* (N, 3, H) */
    real *ew[MAX_LAYERS + 1];                /* (E, 3H + R): edge weights entering GCL layer i */
    real *pe_pre, *pe_act, *pe;              /* pos_expansion: (N, H/2) x 2, (N, H) */
    TapeGCL gcl[MAX_LAYERS];
    TapeMsg msg[MAX_LAYERS];
    TapeUpd upd[MAX_LAYERS];
    TapeOut out[2];
    real *s, *vec, *dpos, *pgrad;            /* final s, vec; dpos and the pos_grad sum (N, 3) */
    real *mu;                                /* (U, H): the last GCL layer's m on the unmasked edges */
    /* backward scratch */
    real *g_ew, *g_e1, *g_e2, *g_e3, *g_e4;  /* (E, 3H + R), (E, H) x 3, (E) */
    real *g_s, *g_s2, *g_vec, *g_vec2;       /* (N, H), (N, H), (N, 3H), (N, 3H) */
    real *g_n1, *g_n2, *g_n3, *g_big;        /* (N, 6H) x 3, max(U, N) x (3H + R) x 3 */
    real *g_f, *g_ne1, *g_h, *g_pe;          /* (E, H), (N, 3H), (N, I), (N, H) */
    real *g_lin3;                            /* lin3 scratch: 4 x 64 x Hs */
    real *g_lin3acc;                         /* lin3_backward's per-channel gradient sums, zero between uses */
    real *g_upd;                             /* the update's lin3: 64 rows of N Hs (lin3_rows_*) */
    void *block;
} Tape;

/* rows of lin3 scratch: the widest hidden layer of LEFTNet's lin3 (H/4) or the update's
 * (48 + 8 kept per node) */
static size_t lin3_rows(const oard_config *c) { return c->hidden_channels / 4 > 56 ? (size_t)c->hidden_channels / 4 : 56; }
/* rows of lin3_backward's accumulator: LEFTNet's lin3 (3 -> H/4 -> 1), (in + 1) x out per
 * layer */
static size_t lin3_acc_rows(const oard_config *c) {
    size_t a = (size_t)c->hidden_channels / 4;
    return 4 * a + (a + 1);
}

/* next n reals (16-aligned) of a layout being measured (base NULL) or assigned */
static void take_n(real **ptr, real *base, size_t *off, size_t n) {
    if (base) *ptr = base + *off;
    *off += round_up(n ? n : 1, 16);
}

/* Lays out the tape of a sample with N nodes, E edges, U unmasked edges and NF nodes per
 * fragment; returns the number of reals, assigning pointers when base is given. */
static size_t tape_layout(Tape *t, const oard_config *c, size_t N, size_t E, size_t U, size_t NF, real *base) {
    const size_t H = (size_t)c->hidden_channels, R = (size_t)c->num_radial, EW = 3 * H + R;
    const size_t I = (size_t)c->in_hidden_channels, F = (size_t)(c->node_nfs[0] - c->pos_dim);
    const size_t Eemb = I - (size_t)c->condition_time - (size_t)c->condition_nf, Hs = round_up(H, 16);
    const size_t UN = U > N ? U : N;
    size_t off = 0;
    for (int f = 0; f < 3; f++) {
        take_n(&t->feat[f], base, &off, NF * F);
        take_n(&t->enc_pre[f], base, &off, NF * (2 * F + Eemb));
        take_n(&t->enc_act[f], base, &off, NF * 2 * F);
    }
    take_n(&t->h, base, &off, N * I);
    take_n(&t->rad_pre, base, &off, E * H);
    take_n(&t->rad_act, base, &off, E * H);
    take_n(&t->rad_g, base, &off, E * H);
    take_n(&t->nb_u, base, &off, N * H);
    take_n(&t->nb_un, base, &off, N * H);
    take_n(&t->nb_rstd, base, &off, N);
    take_n(&t->s0, base, &off, N * H);
    take_n(&t->sv_u, base, &off, N * H);
    take_n(&t->sv_un, base, &off, N * H);
    take_n(&t->sv_rstd, base, &off, N);
    take_n(&t->sv_t, base, &off, N * H);
    take_n(&t->ne1, base, &off, N * 3 * H);
    for (int i = 0; i <= c->num_layers; i++) take_n(&t->ew[i], base, &off, E * EW);
    take_n(&t->pe_pre, base, &off, N * (H / 2));
    take_n(&t->pe_act, base, &off, N * (H / 2));
    take_n(&t->pe, base, &off, N * H);
    for (int i = 0; i < c->num_layers; i++) {
        TapeGCL *g = &t->gcl[i];
        take_n(&g->xhat, base, &off, N * H);
        take_n(&g->rstd, base, &off, N);
        take_n(&g->xh, base, &off, N * H);
        take_n(&g->A, base, &off, N * H);
        take_n(&g->Bn, base, &off, N * H);
        take_n(&g->pre1, base, &off, E * H);
        take_n(&g->act1, base, &off, E * H);
        take_n(&g->pre2, base, &off, E * H);
        take_n(&g->m2, base, &off, E * H);
        take_n(&g->att_pre, base, &off, E);
        take_n(&g->m, base, &off, E * H);
        take_n(&g->cat, base, &off, N * 2 * H);
        take_n(&g->node_pre, base, &off, N * 2 * H);
        take_n(&g->node_act, base, &off, N * H);
        take_n(&g->out_pre, base, &off, E * EW);
        TapeMsg *q = &t->msg[i];
        take_n(&q->xhat, base, &off, N * H);
        take_n(&q->rstd, base, &off, N);
        take_n(&q->xn, base, &off, N * H);
        take_n(&q->x1_pre, base, &off, N * H);
        take_n(&q->x1, base, &off, N * H);
        take_n(&q->xh3, base, &off, N * 3 * H);
        take_n(&q->ewu, base, &off, U * EW);
        take_n(&q->rbfu, base, &off, U * R);
        take_n(&q->dp_pre, base, &off, U * 3 * H);
        take_n(&q->dp_act, base, &off, U * 3 * H);
        take_n(&q->dp, base, &off, U * 3 * H);
        take_n(&q->rp, base, &off, U * 3 * H);
        take_n(&q->vec_in, base, &off, N * 3 * H);
        TapeUpd *u = &t->upd[i];
        if (c->update) {
            take_n(&u->vec_in, base, &off, N * 3 * H);
            take_n(&u->V, base, &off, N * 6 * H);
            take_n(&u->q, base, &off, N * 3 * Hs);
            take_n(&u->z, base, &off, N * 56 * Hs);
            take_n(&u->a, base, &off, N * 56 * Hs);
            take_n(&u->cat, base, &off, N * 2 * H);
            take_n(&u->xv_pre, base, &off, N * H);
            take_n(&u->xv, base, &off, N * H);
            take_n(&u->X, base, &off, N * 3 * H);
        }
        if (c->pos_grad) {
            take_n(&u->dyn_in, base, &off, N * H);
            take_n(&u->dyn_pre, base, &off, N * (H / 2));
            take_n(&u->dyn_act, base, &off, N * (H / 2));
        }
    }
    for (int k = 0; k < (c->single_layer_output ? 1 : 2); k++) {
        TapeOut *o = &t->out[k];
        size_t hid = k == 0 ? H : H / 2, out = (c->single_layer_output || k == 1) ? 1 : H / 2;
        take_n(&o->xin, base, &off, N * hid);
        take_n(&o->vin, base, &off, N * 3 * hid);
        take_n(&o->v1, base, &off, N * 3 * hid);
        take_n(&o->v2, base, &off, N * 3 * out);
        take_n(&o->nrm, base, &off, N * hid);
        take_n(&o->cat, base, &off, N * 2 * hid);
        take_n(&o->u_pre, base, &off, N * hid);
        take_n(&o->u_act, base, &off, N * hid);
        take_n(&o->u, base, &off, N * 2 * out);
    }
    take_n(&t->s, base, &off, N * H);
    take_n(&t->vec, base, &off, N * 3 * H);
    take_n(&t->dpos, base, &off, N * 3);
    take_n(&t->pgrad, base, &off, N * 3);
    take_n(&t->mu, base, &off, U * H);
    take_n(&t->g_ew, base, &off, E * EW);
    take_n(&t->g_e1, base, &off, E * H);
    take_n(&t->g_e2, base, &off, E * H);
    take_n(&t->g_e3, base, &off, E * H);
    take_n(&t->g_e4, base, &off, E);
    take_n(&t->g_s, base, &off, N * H);
    take_n(&t->g_s2, base, &off, N * H);
    take_n(&t->g_vec, base, &off, N * 3 * H);
    take_n(&t->g_vec2, base, &off, N * 3 * H);
    take_n(&t->g_n1, base, &off, N * 6 * H);
    take_n(&t->g_n2, base, &off, N * 6 * H);
    take_n(&t->g_n3, base, &off, N * 6 * H);
    take_n(&t->g_big, base, &off, UN * EW * 3);
    take_n(&t->g_f, base, &off, E * H);
    take_n(&t->g_ne1, base, &off, N * 3 * H);
    take_n(&t->g_h, base, &off, N * I);
    take_n(&t->g_pe, base, &off, N * H);
    take_n(&t->g_lin3, base, &off, (12 + 4 * lin3_rows(c)) * Hs);
    take_n(&t->g_lin3acc, base, &off, lin3_acc_rows(c) * Hs);
    take_n(&t->g_upd, base, &off, c->update ? N * 64 * Hs : 0);
    t->N = (int)N; t->E = (int)E; t->U = (int)U; t->NF = (int)NF;
    return off;
}

/* ---- layer by layer: forward keeping the tape, and backward ---- */

/* radial_filter: f = radial_lin(rbf) * rbound on every edge, into ew[:, 2H:3H] */
static void radial_train(const Ctx *cx, const Geometry *geo, Tape *t, real *ew) {
    const LEFTNetParams *p = &cx->m->net;
    const int H = cx->m->cfg.hidden_channels, EW = 3 * H + cx->m->cfg.num_radial, E = t->E;
    linear_train(&p->radial_lin0, geo->rbf, (size_t)E, t->rad_pre, t->rad_act, 1);
    linear_forward(&p->radial_lin2, t->rad_act, (size_t)E, t->rad_g, 0);
    for (int e = 0; e < E; e++)
        for (int h = 0; h < H; h++) ew[(size_t)e * EW + 2 * H + h] = t->rad_g[(size_t)e * H + h] * geo->rbound[e];
}

/* df (E, H): gradient of f; consumed */
static void radial_backward(const Ctx *cx, const Geometry *geo, Tape *t, const Grad *sink, real *df) {
    const LEFTNetParams *p = &cx->m->net;
    const int H = cx->m->cfg.hidden_channels, E = t->E;
    for (int e = 0; e < E; e++)
        for (int h = 0; h < H; h++) df[(size_t)e * H + h] *= geo->rbound[e];
    real *da = t->g_e1;
    linear_backward(sink, &p->radial_lin2, t->rad_act, df, (size_t)E, da, 0);
    silu_backward(t->rad_pre, da, (size_t)E * H);
    linear_backward(sink, &p->radial_lin0, geo->rbf, da, (size_t)E, NULL, 0);
}

/* NeighborEmb: s0 = embedding(h) + sum over edges into n of f * LN0(Linear(h))[source] */
static void neighbor_emb_train(const Ctx *cx, Tape *t, const real *ew) {
    const LEFTNetParams *p = &cx->m->net;
    const Graph *g = cx->g;
    const int H = cx->m->cfg.hidden_channels, EW = 3 * H + cx->m->cfg.num_radial, N = t->N;
    linear_forward(&p->neighbor_emb, t->h, (size_t)N, t->nb_u, 0);
    layernorm_train(t->nb_u, (size_t)N, H, NULL, NULL, t->nb_un, t->nb_un, t->nb_rstd);
    linear_forward(&p->embedding, t->h, (size_t)N, t->s0, 0);
    for (int e = 0; e < g->E; e++) {
        const real *f = ew + (size_t)e * EW + 2 * H, *un = t->nb_un + (size_t)g->src[e] * H;
        real *s = t->s0 + (size_t)g->dst[e] * H;
        for (int h = 0; h < H; h++) s[h] += f[h] * un[h];
    }
}

/* ds0 (N, H) -> gradient of h (t->g_h, overwritten) and of f (df, added) */
static void neighbor_emb_backward(const Ctx *cx, Tape *t, const Grad *sink, const real *ew, const real *ds0, real *df) {
    const LEFTNetParams *p = &cx->m->net;
    const Graph *g = cx->g;
    const int H = cx->m->cfg.hidden_channels, EW = 3 * H + cx->m->cfg.num_radial, N = t->N;
    linear_backward(sink, &p->embedding, t->h, ds0, (size_t)N, t->g_h, 0);
    real *dun = t->g_s2;
    memset(dun, 0, (size_t)N * H * sizeof(real));
    for (int e = 0; e < g->E; e++) {
        const real *f = ew + (size_t)e * EW + 2 * H, *un = t->nb_un + (size_t)g->src[e] * H;
        const real *ds = ds0 + (size_t)g->dst[e] * H;
        real *du = dun + (size_t)g->src[e] * H, *dfe = df + (size_t)e * H;
        for (int h = 0; h < H; h++) { du[h] += f[h] * ds[h]; dfe[h] += un[h] * ds[h]; }
    }
    layernorm_backward(sink, dun, t->nb_un, t->nb_rstd, (size_t)N, H, NULL, NULL, dun);
    linear_backward(sink, &p->neighbor_emb, t->h, dun, (size_t)N, t->g_h, 1);
}

/* CFConvS2V: NE1[n] = sum over edges into n of (f (x) d) * SiLU(LN0(Linear(s0)))[source] */
static void s2v_train(const Ctx *cx, const Geometry *geo, Tape *t, const real *ew) {
    const Graph *g = cx->g;
    const int H = cx->m->cfg.hidden_channels, EW = 3 * H + cx->m->cfg.num_radial, N = t->N;
    linear_forward(&cx->m->net.s2v_lin1, t->s0, (size_t)N, t->sv_u, 0);
    layernorm_train(t->sv_u, (size_t)N, H, NULL, NULL, t->sv_un, t->sv_un, t->sv_rstd);
    memcpy(t->sv_t, t->sv_un, (size_t)N * H * sizeof(real));
    silu_inplace(t->sv_t, (size_t)N * H);
    memset(t->ne1, 0, (size_t)N * 3 * H * sizeof(real));
    for (int e = 0; e < g->E; e++) {
        const real *f = ew + (size_t)e * EW + 2 * H, *d = geo->d + 3 * e, *ts = t->sv_t + (size_t)g->src[e] * H;
        real *ne = t->ne1 + (size_t)g->dst[e] * 3 * H;
        for (int k = 0; k < 3; k++)
            for (int h = 0; h < H; h++) ne[k * H + h] += f[h] * d[k] * ts[h];
    }
}

/* dne1 (N, 3H) -> gradient of s0 (added to ds0) and of f (added to df) */
static void s2v_backward(const Ctx *cx, const Geometry *geo, Tape *t, const Grad *sink, const real *ew, const real *dne1, real *ds0, real *df) {
    const Graph *g = cx->g;
    const int H = cx->m->cfg.hidden_channels, EW = 3 * H + cx->m->cfg.num_radial, N = t->N;
    real *dt = t->g_s2;
    memset(dt, 0, (size_t)N * H * sizeof(real));
    for (int e = 0; e < g->E; e++) {
        const real *f = ew + (size_t)e * EW + 2 * H, *d = geo->d + 3 * e, *ts = t->sv_t + (size_t)g->src[e] * H;
        const real *dn = dne1 + (size_t)g->dst[e] * 3 * H;
        real *dts = dt + (size_t)g->src[e] * H, *dfe = df + (size_t)e * H;
        for (int h = 0; h < H; h++) {
            real gs = dn[h] * d[0] + dn[H + h] * d[1] + dn[2 * H + h] * d[2];
            dfe[h] += gs * ts[h];
            dts[h] += f[h] * gs;
        }
    }
    silu_backward_pre(t->sv_un, dt, (size_t)N * H);
    layernorm_backward(sink, dt, t->sv_un, t->sv_rstd, (size_t)N, H, NULL, NULL, dt);
    linear_backward(sink, &cx->m->net.s2v_lin1, t->s0, dt, (size_t)N, ds0, 1);
}

/* q (3 x Hs) = NE1 of `node` on the frame of edge e (zero frame on a masked edge), raw */
static void edge_rows(const Ctx *cx, const Geometry *geo, const Tape *t, int e, int node, real *q) {
    const int H = cx->m->cfg.hidden_channels;
    const real *fr[3] = {geo->d + 3 * e, geo->c + 3 * e, geo->v + 3 * e};
    frame_rows(t->ne1 + (size_t)node * 3 * H, (size_t)H, H, fr, 0, q);
}

/* Edge weights [scalar_i, scalar_j] * rbound from NE1, on every edge. On a masked edge
 * the frame is zero, so both scalars are lin3(0) (a function of the parameters): computed
 * once (as edge_scalarization). */
static void edge_scalarization_train(const Ctx *cx, const Geometry *geo, Tape *t, real *ew) {
    const oard_config *c = &cx->m->cfg;
    const Graph *g = cx->g;
    const int H = c->hidden_channels, EW = 3 * H + c->num_radial;
    const size_t Hs = round_up((size_t)H, 16);
    real *q = t->g_lin3, *out = q + 3 * Hs, *z = out + Hs, *a = z + lin3_rows(c) * Hs;
    memset(q, 0, 3 * Hs * sizeof(real));
    lin3_train(cx->m->net.lin3, 2, q, H, out, z, a);
    for (int e = 0; e < g->E; e++)
        if (geo->mask[e] == 0)
            for (int side = 0; side < 2; side++)
                for (int h = 0; h < H; h++) ew[(size_t)e * EW + side * H + h] = out[h] * geo->rbound[e];
    for (int u = 0; u < geo->ue_start[g->N]; u++) {
        int e = geo->ue[u];
        for (int side = 0; side < 2; side++) {
            edge_rows(cx, geo, t, e, side == 0 ? g->src[e] : g->dst[e], q);
            if (c->reflect_equiv)
                for (int h = 0; h < H; h++) q[Hs + h] = RFABS(q[Hs + h]);
            lin3_train(cx->m->net.lin3, 2, q, H, out, z, a);
            real *r = ew + (size_t)e * EW + side * H;
            for (int h = 0; h < H; h++) r[h] = (out[h] + q[h]) * geo->rbound[e];
        }
    }
}

/* dew (E, 3H + R), columns [0, 2H) -> gradient of NE1 (dne1, overwritten); the lin3
 * activations are recomputed per edge rather than kept. The masked edges' lin3(0) is one
 * function of the parameters: its backward runs once, on the sum of their gradients. */
static void edge_scalarization_backward(const Ctx *cx, const Geometry *geo, Tape *t, const Grad *sink, const real *dew, real *dne1) {
    const oard_config *c = &cx->m->cfg;
    const Graph *g = cx->g;
    const int H = c->hidden_channels, EW = 3 * H + c->num_radial;
    const size_t Hs = round_up((size_t)H, 16);
    real *q = t->g_lin3, *raw = q + 3 * Hs, *out = raw + 3 * Hs, *dout = out + Hs, *dq = dout + Hs;
    real *z = dq + 3 * Hs, *a = z + lin3_rows(c) * Hs, *tmp = a + lin3_rows(c) * Hs;
    memset(dne1, 0, (size_t)t->N * 3 * H * sizeof(real));
    memset(dout, 0, Hs * sizeof(real));
    for (int e = 0; e < g->E; e++)
        if (geo->mask[e] == 0)
            for (int side = 0; side < 2; side++) {
                const real *dr = dew + (size_t)e * EW + side * H;
                for (int h = 0; h < H; h++) dout[h] += dr[h] * geo->rbound[e];
            }
    memset(q, 0, 3 * Hs * sizeof(real));
    lin3_train(cx->m->net.lin3, 2, q, H, out, z, a);
    lin3_backward(cx->m->net.lin3, 2, q, H, z, a, dout, NULL, tmp, t->g_lin3acc);
    for (int u = 0; u < geo->ue_start[g->N]; u++) {
        int e = geo->ue[u];
        const real *fr[3] = {geo->d + 3 * e, geo->c + 3 * e, geo->v + 3 * e};
        for (int side = 0; side < 2; side++) {
            int node = side == 0 ? g->src[e] : g->dst[e];
            edge_rows(cx, geo, t, e, node, raw);
            memcpy(q, raw, 3 * Hs * sizeof(real));
            if (c->reflect_equiv)
                for (int h = 0; h < H; h++) q[Hs + h] = RFABS(q[Hs + h]);
            lin3_train(cx->m->net.lin3, 2, q, H, out, z, a);
            const real *dr = dew + (size_t)e * EW + side * H;
            for (int h = 0; h < H; h++) dout[h] = dr[h] * geo->rbound[e];
            lin3_backward(cx->m->net.lin3, 2, q, H, z, a, dout, dq, tmp, t->g_lin3acc);
            for (int h = 0; h < H; h++) dq[h] += dout[h]; /* the d-row is added to the scalar */
            if (c->reflect_equiv)
                for (int h = 0; h < H; h++) dq[Hs + h] *= raw[Hs + h] > 0 ? 1 : (raw[Hs + h] < 0 ? -1 : 0);
            real *dn = dne1 + (size_t)node * 3 * H;
            for (int xyz = 0; xyz < 3; xyz++)
                for (int h = 0; h < H; h++)
                    dn[xyz * H + h] += dq[h] * fr[0][xyz] + dq[Hs + h] * fr[1][xyz] + dq[2 * Hs + h] * fr[2][xyz];
        }
    }
    lin3_reduce(sink, cx->m->net.lin3, 2, H, t->g_lin3acc);
}

/* A view of rows [r0, r0 + in) of a Linear's transposed weight: one input block of the
 * layer (its gradient is the same block of the gradient) */
static Linear linear_block(const Linear *L, int r0, int in, int with_bias) {
    Linear v = *L;
    v.wt = L->wt + (size_t)r0 * L->ldw;
    v.in = in;
    v.b = with_bias ? L->b : NULL;
    return v;
}

/* GCLMessage (see gcl_message): s <- xh + node_mlp([xh, agg]); ew_out = ew_in + SiLU(edge_out_trans(m)).
 * In the last layer only the unmasked edges' ew_out is read again (by equi_message): there
 * edge_out_trans runs on their rows of m only, gathered into mu (U, H), and the other rows
 * of ew_out are left unset (as gcl_message skips them). */
static void gcl_train(const Ctx *cx, const Geometry *geo, TapeGCL *t, const GCLParams *P, int N, real *s, const real *ew_in, real *ew_out,
                      int last, real *mu) {
    const Graph *g = cx->g;
    const int H = cx->m->cfg.hidden_channels, EW = 3 * H + cx->m->cfg.num_radial, E = g->E;
    const Linear Li = linear_block(&P->edge_mlp.l[0], 0, H, 1), Lj = linear_block(&P->edge_mlp.l[0], H, H, 0);
    const Linear Le = linear_block(&P->edge_mlp.l[0], 2 * H, EW, 0);
    layernorm_train(s, (size_t)N, H, P->ln_w, P->ln_b, t->xh, t->xhat, t->rstd);
    linear_forward(&Li, t->xh, (size_t)N, t->A, 0);
    linear_forward(&Lj, t->xh, (size_t)N, t->Bn, 0);
    linear_forward(&Le, ew_in, (size_t)E, t->pre1, 0);
    for (int e = 0; e < E; e++) {
        const real *ai = t->A + (size_t)g->src[e] * H, *bj = t->Bn + (size_t)g->dst[e] * H;
        real *r = t->pre1 + (size_t)e * H;
        for (int h = 0; h < H; h++) r[h] += ai[h] + bj[h];
    }
    silu_train(NULL, t->pre1, t->act1, (size_t)E * H);
    linear_train(&P->edge_mlp.l[1], t->act1, (size_t)E, t->pre2, t->m2, 1);
    linear_forward(&P->att_mlp.l[0], t->m2, (size_t)E, t->att_pre, 0);
    real *agg = t->cat; /* [xh, agg] rows */
    for (int n = 0; n < N; n++) {
        memcpy(t->cat + (size_t)n * 2 * H, t->xh + (size_t)n * H, H * sizeof(real));
        memset(agg + (size_t)n * 2 * H + H, 0, H * sizeof(real));
    }
    for (int e = 0; e < E; e++) {
        real att = silu(t->att_pre[e]), *m = t->m + (size_t)e * H, *ag = agg + (size_t)g->src[e] * 2 * H + H;
        const real *m2 = t->m2 + (size_t)e * H;
        for (int h = 0; h < H; h++) { m[h] = m2[h] * att; ag[h] += m[h]; }
    }
    for (int n = 0; n < N; n++) {
        int cnt = g->out_start[n + 1] - g->out_start[n];
        for (int h = 0; h < H; h++) agg[(size_t)n * 2 * H + H + h] = cnt ? agg[(size_t)n * 2 * H + H + h] / (real)cnt : 0;
    }
    real *n2 = cx->w->nodetmp;
    mlp_train(&P->node_mlp, t->cat, (size_t)N, t->node_pre, t->node_act, n2);
    for (size_t i = 0; i < (size_t)N * H; i++) s[i] = t->xh[i] + n2[i];
    if (!last) {
        linear_forward(&P->edge_out_trans.l[0], t->m, (size_t)E, t->out_pre, 0);
        silu_train(ew_in, t->out_pre, ew_out, (size_t)E * EW);
        return;
    }
    const int U = geo->ue_start[N];
    for (int u = 0; u < U; u++) memcpy(mu + (size_t)u * H, t->m + (size_t)geo->ue[u] * H, H * sizeof(real));
    linear_forward(&P->edge_out_trans.l[0], mu, (size_t)U, t->out_pre, 0);
    for (int u = 0; u < U; u++) {
        size_t e = (size_t)geo->ue[u];
        silu_train(ew_in + e * EW, t->out_pre + (size_t)u * EW, ew_out + e * EW, (size_t)EW);
    }
}

/* ds (N, H): gradient of s_out, replaced by that of s_in; dew (E, EW): gradient of
 * ew_out, replaced by that of ew_in (last: gcl_train's last layer, edge_out_trans on mu) */
static void gcl_backward(const Ctx *cx, const Geometry *geo, Tape *tp, const TapeGCL *t, const GCLParams *P, const Grad *sink, const real *ew_in,
                         real *ds, real *dew, int last, const real *mu) {
    const Graph *g = cx->g;
    const int H = cx->m->cfg.hidden_channels, EW = 3 * H + cx->m->cfg.num_radial, E = g->E, N = tp->N;
    const Linear Li = linear_block(&P->edge_mlp.l[0], 0, H, 1), Lj = linear_block(&P->edge_mlp.l[0], H, H, 0);
    const Linear Le = linear_block(&P->edge_mlp.l[0], 2 * H, EW, 0);
    real *dm = tp->g_e1, *dm2 = tp->g_e2, *dm1 = tp->g_e3, *datt = tp->g_e4, *dt = tp->g_big;
    real *dxh = tp->g_s2, *dcat = tp->g_n1, *dn2 = tp->g_n2, *Di = dn2, *Dj = dn2 + (size_t)N * H;
    /* edgeweight += SiLU(edge_out_trans(m)) */
    if (!last) {
        silu_backward_to(t->out_pre, dew, dt, (size_t)E * EW);
        linear_backward(sink, &P->edge_out_trans.l[0], t->m, dt, (size_t)E, dm, 0);
    } else { /* unmasked rows only; the others of m get no gradient from here */
        const int U = geo->ue_start[N];
        for (int u = 0; u < U; u++)
            silu_backward_to(t->out_pre + (size_t)u * EW, dew + (size_t)geo->ue[u] * EW, dt + (size_t)u * EW, (size_t)EW);
        linear_backward(sink, &P->edge_out_trans.l[0], mu, dt, (size_t)U, dm2, 0);
        memset(dm, 0, (size_t)E * H * sizeof(real));
        for (int u = 0; u < U; u++) memcpy(dm + (size_t)geo->ue[u] * H, dm2 + (size_t)u * H, H * sizeof(real));
    }
    /* s = xh + node_mlp([xh, agg]) */
    memcpy(dxh, ds, (size_t)N * H * sizeof(real));
    memcpy(dn2, ds, (size_t)N * H * sizeof(real));
    mlp_backward(sink, &P->node_mlp, t->cat, (size_t)N, t->node_pre, t->node_act, dn2, dcat, 0, tp->g_n3);
    for (int n = 0; n < N; n++)
        for (int h = 0; h < H; h++) dxh[(size_t)n * H + h] += dcat[(size_t)n * 2 * H + h];
    /* agg = mean of m over the edges out of each node */
    for (int e = 0; e < E; e++) {
        int n = g->src[e], cnt = g->out_start[n + 1] - g->out_start[n];
        const real *da = dcat + (size_t)n * 2 * H + H;
        real *d = dm + (size_t)e * H;
        for (int h = 0; h < H; h++) d[h] += da[h] / (real)cnt;
    }
    /* m = m2 * SiLU(att_mlp(m2)) */
    for (int e = 0; e < E; e++) {
        real att = silu(t->att_pre[e]), sum = 0;
        const real *d = dm + (size_t)e * H, *m2 = t->m2 + (size_t)e * H;
        real *d2 = dm2 + (size_t)e * H;
        for (int h = 0; h < H; h++) { d2[h] = d[h] * att; sum += d[h] * m2[h]; }
        datt[e] = sum * dsilu(t->att_pre[e]);
    }
    linear_backward(sink, &P->att_mlp.l[0], t->m2, datt, (size_t)E, dm2, 1);
    /* the two edge_mlp layers */
    silu_backward(t->pre2, dm2, (size_t)E * H);
    linear_backward(sink, &P->edge_mlp.l[1], t->act1, dm2, (size_t)E, dm1, 0);
    silu_backward(t->pre1, dm1, (size_t)E * H);
    memset(Di, 0, (size_t)2 * N * H * sizeof(real));
    for (int e = 0; e < E; e++) {
        const real *d = dm1 + (size_t)e * H;
        real *di = Di + (size_t)g->src[e] * H, *dj = Dj + (size_t)g->dst[e] * H;
        for (int h = 0; h < H; h++) { di[h] += d[h]; dj[h] += d[h]; }
    }
    linear_backward(sink, &Li, t->xh, Di, (size_t)N, dxh, 1);
    linear_backward(sink, &Lj, t->xh, Dj, (size_t)N, dxh, 1);
    linear_backward(sink, &Le, ew_in, dm1, (size_t)E, dew, 1);
    layernorm_backward(sink, dxh, t->xhat, t->rstd, (size_t)N, H, P->ln_w, P->ln_b, ds);
}

/* EquiMessage (see equi_message) on the unmasked edges: s <- (s + dx) / sqrt 2, vec += dvec */
static void equi_message_train(const Ctx *cx, const Geometry *geo, TapeMsg *t, const MsgParams *P, int N, real *s, real *vec, const real *ew) {
    const oard_config *c = &cx->m->cfg;
    const Graph *g = cx->g;
    const int H = c->hidden_channels, R = c->num_radial, EW = 3 * H + R, U = geo->ue_start[N];
    const real inv_sqrt_3 = (real)(1.0 / sqrt(3.0)), inv_sqrt_h = (real)(1.0 / sqrt((double)H));
    const real inv_sqrt_2 = (real)(1.0 / sqrt(2.0));
    memcpy(t->vec_in, vec, (size_t)N * 3 * H * sizeof(real));
    layernorm_train(s, (size_t)N, H, P->ln_w, P->ln_b, t->xn, t->xhat, t->rstd);
    linear_train(&P->x_proj0, t->xn, (size_t)N, t->x1_pre, t->x1, 1);
    linear_forward(&P->x_proj2, t->x1, (size_t)N, t->xh3, 0);
    for (int u = 0; u < U; u++) {
        memcpy(t->ewu + (size_t)u * EW, ew + (size_t)geo->ue[u] * EW, EW * sizeof(real));
        memcpy(t->rbfu + (size_t)u * R, geo->rbf + (size_t)geo->ue[u] * R, R * sizeof(real));
    }
    linear_train(&P->dir_proj0, t->ewu, (size_t)U, t->dp_pre, t->dp_act, 1);
    linear_forward(&P->dir_proj2, t->dp_act, (size_t)U, t->dp, 0);
    linear_forward(&P->rbf_proj, t->rbfu, (size_t)U, t->rp, 0);
    real *dx = cx->w->nodetmp;
    memset(dx, 0, (size_t)N * H * sizeof(real));
    for (int u = 0; u < U; u++) {
        int e = geo->ue[u], m = g->src[e], n = g->dst[e];
        const real *xm = t->xh3 + (size_t)m * 3 * H, *xn = t->xh3 + (size_t)n * 3 * H, *vm = t->vec_in + (size_t)m * 3 * H;
        const real *wk = t->dp + (size_t)u * 3 * H, *rk = t->rp + (size_t)u * 3 * H, *d = geo->d + 3 * e, *cc = geo->c + 3 * e;
        real *dxn = dx + (size_t)n * H, *dvn = vec + (size_t)n * 3 * H;
        for (int h = 0; h < H; h++) {
            real xs = (xm[h] + xn[h]) * (rk[h] * wk[h]);
            real a = (xm[H + h] + xn[H + h]) * (rk[H + h] * wk[H + h]) * inv_sqrt_3;
            real b = (xm[2 * H + h] + xn[2 * H + h]) * (rk[2 * H + h] * wk[2 * H + h]);
            dxn[h] += xs;
            for (int q = 0; q < 3; q++) {
                real v = vm[q * H + h] * a + b * d[q];
                if (!c->reflect_equiv) v = v + xs * cc[q];
                dvn[q * H + h] += v * inv_sqrt_h;
            }
        }
    }
    for (size_t i = 0; i < (size_t)N * H; i++) s[i] = (s[i] + dx[i]) * inv_sqrt_2;
}

/* ds, dvec: gradients of s_out and vec_out, replaced by those of s_in and vec_in; the
 * edge weights' gradient is added to dew */
static void equi_message_backward(const Ctx *cx, const Geometry *geo, Tape *tp, const TapeMsg *t, const MsgParams *P, const Grad *sink, real *ds,
                                  real *dvec, real *dew) {
    const oard_config *c = &cx->m->cfg;
    const Graph *g = cx->g;
    const int H = c->hidden_channels, R = c->num_radial, EW = 3 * H + R, N = tp->N, U = geo->ue_start[N];
    const real inv_sqrt_3 = (real)(1.0 / sqrt(3.0)), inv_sqrt_h = (real)(1.0 / sqrt((double)H));
    const real inv_sqrt_2 = (real)(1.0 / sqrt(2.0));
    real *dxh3 = tp->g_n1, *dw = tp->g_big, *d2 = dw + (size_t)U * 3 * H, *dewu = d2 + (size_t)U * 3 * H;
    real *dx1 = tp->g_s2;
    for (size_t i = 0; i < (size_t)N * H; i++) ds[i] *= inv_sqrt_2; /* now both d(s_in) direct and d(dx) */
    memset(dxh3, 0, (size_t)N * 3 * H * sizeof(real));
    /* the message; the dvec sums are read before dvec (= d vec_out) gains the vec_in part */
    real *dvin = tp->g_vec2;
    memcpy(dvin, dvec, (size_t)N * 3 * H * sizeof(real));
    for (int u = 0; u < U; u++) {
        int e = geo->ue[u], m = g->src[e], n = g->dst[e];
        const real *xm = t->xh3 + (size_t)m * 3 * H, *xn = t->xh3 + (size_t)n * 3 * H, *vm = t->vec_in + (size_t)m * 3 * H;
        const real *wk = t->dp + (size_t)u * 3 * H, *rk = t->rp + (size_t)u * 3 * H, *d = geo->d + 3 * e, *cc = geo->c + 3 * e;
        const real *gv = dvec + (size_t)n * 3 * H, *gx = ds + (size_t)n * H;
        real *dxm = dxh3 + (size_t)m * 3 * H, *dxn = dxh3 + (size_t)n * 3 * H, *dvm = dvin + (size_t)m * 3 * H;
        real *dwu = dw + (size_t)u * 3 * H;
        for (int h = 0; h < H; h++) {
            real Sx = xm[h] + xn[h], Sa = xm[H + h] + xn[H + h], Sb = xm[2 * H + h] + xn[2 * H + h];
            real wx = rk[h] * wk[h], wa = rk[H + h] * wk[H + h], wb = rk[2 * H + h] * wk[2 * H + h];
            real a = Sa * wa * inv_sqrt_3, gq[3], da = 0, db = 0, dxs = gx[h];
            for (int q = 0; q < 3; q++) {
                gq[q] = gv[q * H + h] * inv_sqrt_h;
                da += gq[q] * vm[q * H + h];
                db += gq[q] * d[q];
                if (!c->reflect_equiv) dxs += gq[q] * cc[q];
                dvm[q * H + h] += gq[q] * a;
            }
            real dSx = dxs * wx, dSa = da * wa * inv_sqrt_3, dSb = db * wb;
            dxm[h] += dSx; dxn[h] += dSx;
            dxm[H + h] += dSa; dxn[H + h] += dSa;
            dxm[2 * H + h] += dSb; dxn[2 * H + h] += dSb;
            dwu[h] = dxs * Sx; dwu[H + h] = da * Sa * inv_sqrt_3; dwu[2 * H + h] = db * Sb;
        }
    }
    memcpy(dvec, dvin, (size_t)N * 3 * H * sizeof(real));
    /* w = rbf_proj(rbf) * dir_proj(edgeweight) */
    for (size_t i = 0; i < (size_t)U * 3 * H; i++) { d2[i] = dw[i] * t->dp[i]; dw[i] *= t->rp[i]; }
    linear_backward(sink, &P->rbf_proj, t->rbfu, d2, (size_t)U, NULL, 0);
    linear_backward(sink, &P->dir_proj2, t->dp_act, dw, (size_t)U, d2, 0);
    silu_backward(t->dp_pre, d2, (size_t)U * 3 * H);
    linear_backward(sink, &P->dir_proj0, t->ewu, d2, (size_t)U, dewu, 0);
    for (int u = 0; u < U; u++) {
        real *de = dew + (size_t)geo->ue[u] * EW;
        const real *du = dewu + (size_t)u * EW;
        for (int k = 0; k < EW; k++) de[k] += du[k];
    }
    /* xh = x_proj(LN(s)) */
    linear_backward(sink, &P->x_proj2, t->x1, dxh3, (size_t)N, dx1, 0);
    silu_backward(t->x1_pre, dx1, (size_t)N * H);
    real *dxn = tp->g_n2;
    linear_backward(sink, &P->x_proj0, t->xn, dx1, (size_t)N, dxn, 0);
    layernorm_backward(sink, dxn, t->xhat, t->rstd, (size_t)N, H, P->ln_w, P->ln_b, dxn);
    for (size_t i = 0; i < (size_t)N * H; i++) ds[i] += dxn[i];
}

/* axes[k] = axis k (x1, y1, z1) of node n's frame, as equi_update reads it */
static void node_axes(const Geometry *geo, int n, real axes[3][3]) {
    const real *fr = geo->frame + 9 * n;
    for (int k = 0; k < 3; k++)
        for (int j = 0; j < 3; j++) axes[k][j] = fr[3 * j + k];
}

/* EquiUpdate (see equi_update): s += (p + q + dot) / sqrt 2, vec += g vec2 */
static void equi_update_train(const Ctx *cx, const Geometry *geo, TapeUpd *t, const UpdParams *P, int N, real *s, real *vec, real *scratch) {
    const oard_config *c = &cx->m->cfg;
    const int H = c->hidden_channels;
    const size_t Hs = round_up((size_t)H, 16);
    const real inv_sqrt_2 = (real)(1.0 / sqrt(2.0)), inv_sqrt_h = (real)(1.0 / sqrt((double)H));
    memcpy(t->vec_in, vec, (size_t)N * 3 * H * sizeof(real));
    linear_forward(&P->vec_proj, vec, (size_t)N * 3, t->V, 0);
    /* frame rows of vec1 per node into q (3, NH), channel major for lin3_rows_train */
    const size_t NH = (size_t)N * Hs;
    real *qa = cx->w->nodetmp, *out = scratch, *qr = out + NH; /* qa: 3 x Hs; qr: |q| rows (3, NH) */
    for (int n = 0; n < N; n++) {
        const real *v1 = t->V + (size_t)n * 6 * H, *v2 = v1 + H; /* xyz rows 2H apart */
        real axes[3][3], *dot = cx->w->agg + (size_t)n * H;
        node_axes(geo, n, axes);
        const real *ax[3] = {axes[0], axes[1], axes[2]};
        frame_rows(v1, 2 * (size_t)H, H, ax, 0, qa);
        for (int k = 0; k < 3; k++) {
            real *qk = t->q + (size_t)k * NH + (size_t)n * Hs, *rk = qr + (size_t)k * NH + (size_t)n * Hs;
            for (size_t h = 0; h < Hs; h++) qk[h] = (int)h < H ? qa[(size_t)k * Hs + h] : 0;
            for (size_t h = 0; h < Hs; h++) rk[h] = (k == 1 && c->reflect_equiv) ? RFABS(qk[h]) : qk[h];
        }
        memcpy(t->cat + (size_t)n * 2 * H, s + (size_t)n * H, H * sizeof(real));
        /* dot is only needed here: s gets it below, after X */
        for (int h = 0; h < H; h++)
            dot[h] = (v1[h] * v2[h] + v1[2 * H + h] * v2[2 * H + h] + v1[4 * H + h] * v2[4 * H + h]) * inv_sqrt_h;
    }
    lin3_rows_train(P->lin3, 3, qr, NH, out, t->z, t->a);
    for (int n = 0; n < N; n++) memcpy(t->cat + (size_t)n * 2 * H + H, out + (size_t)n * Hs, H * sizeof(real));
    linear_train(&P->xvec_proj0, t->cat, (size_t)N, t->xv_pre, t->xv, 1);
    linear_forward(&P->xvec_proj2, t->xv, (size_t)N, t->X, 0);
    for (int n = 0; n < N; n++)
        for (int h = 0; h < H; h++) {
            const real *Xn = t->X + (size_t)n * 3 * H;
            s[(size_t)n * H + h] += (Xn[h] + Xn[H + h] + cx->w->agg[(size_t)n * H + h]) * inv_sqrt_2;
            for (int q = 0; q < 3; q++)
                vec[((size_t)n * 3 + q) * H + h] += Xn[2 * H + h] * t->V[((size_t)n * 3 + q) * 2 * H + H + h];
        }
}

/* ds, dvec: gradients of s_out, vec_out, replaced by those of s_in, vec_in */
static void equi_update_backward(const Ctx *cx, const Geometry *geo, Tape *tp, const TapeUpd *t, const UpdParams *P, const Grad *sink, real *ds,
                                 real *dvec) {
    const oard_config *c = &cx->m->cfg;
    const int H = c->hidden_channels, N = tp->N;
    const size_t Hs = round_up((size_t)H, 16);
    const real inv_sqrt_2 = (real)(1.0 / sqrt(2.0)), inv_sqrt_h = (real)(1.0 / sqrt((double)H));
    real *dX = tp->g_n1, *dV = tp->g_n2, *dcat = tp->g_n3, *dxv = tp->g_s2;
    for (int n = 0; n < N; n++) {
        const real *V = t->V + (size_t)n * 6 * H, *Xn = t->X + (size_t)n * 3 * H;
        real *dXn = dX + (size_t)n * 3 * H, *dVn = dV + (size_t)n * 6 * H;
        for (int h = 0; h < H; h++) {
            real gx = ds[(size_t)n * H + h] * inv_sqrt_2, dg = 0;
            dXn[h] = gx; dXn[H + h] = gx;
            for (int q = 0; q < 3; q++) {
                real gv = dvec[((size_t)n * 3 + q) * H + h], v1 = V[q * 2 * H + h], v2 = V[q * 2 * H + H + h];
                dg += gv * v2;
                dVn[q * 2 * H + h] = gx * v2 * inv_sqrt_h;              /* d vec1 from dot */
                dVn[q * 2 * H + H + h] = gv * Xn[2 * H + h] + gx * v1 * inv_sqrt_h; /* d vec2 */
            }
            dXn[2 * H + h] = dg;
        }
    }
    linear_backward(sink, &P->xvec_proj2, t->xv, dX, (size_t)N, dxv, 0);
    silu_backward(t->xv_pre, dxv, (size_t)N * H);
    linear_backward(sink, &P->xvec_proj0, t->cat, dxv, (size_t)N, dcat, 0);
    const size_t NH = (size_t)N * Hs;
    real *dout = tp->g_upd, *qr = dout + NH, *dq = qr + 3 * NH, *dh = dq + 3 * NH;
    for (int n = 0; n < N; n++) {
        for (int h = 0; h < H; h++) ds[(size_t)n * H + h] += dcat[(size_t)n * 2 * H + h];
        for (size_t h = 0; h < Hs; h++) dout[(size_t)n * Hs + h] = (int)h < H ? dcat[(size_t)n * 2 * H + H + h] : 0;
    }
    for (size_t i = 0; i < 3 * NH; i++) qr[i] = (i / NH == 1 && c->reflect_equiv) ? RFABS(t->q[i]) : t->q[i];
    lin3_rows_backward(sink, P->lin3, 3, qr, NH, t->z, t->a, dout, dq, dh);
    for (int n = 0; n < N; n++) {
        const real *q1 = t->q + NH + (size_t)n * Hs;
        real axes[3][3], *dVn = dV + (size_t)n * 6 * H;
        real *d0 = dq + (size_t)n * Hs, *d1 = d0 + NH, *d2 = d1 + NH;
        node_axes(geo, n, axes);
        if (c->reflect_equiv)
            for (int h = 0; h < H; h++) d1[h] *= q1[h] > 0 ? 1 : (q1[h] < 0 ? -1 : 0);
        for (int xyz = 0; xyz < 3; xyz++)
            for (int h = 0; h < H; h++)
                dVn[xyz * 2 * H + h] += d0[h] * axes[0][xyz] + d1[h] * axes[1][xyz] + d2[h] * axes[2][xyz];
    }
    linear_backward(sink, &P->vec_proj, t->vec_in, dV, (size_t)N * 3, dvec, 1);
}

/* pos_grad: gradient += (c0 x1 + c1 y1 + c2 z1) / num_layers, c = dynamic_mlp(s) */
static void pos_grad_train(const Ctx *cx, const Geometry *geo, TapeUpd *t, int N, const real *s, real *pgrad) {
    const LEFTNetParams *p = &cx->m->net;
    const int H = cx->m->cfg.hidden_channels, L = cx->m->cfg.num_layers;
    real *coef = cx->w->nodetmp;
    memcpy(t->dyn_in, s, (size_t)N * H * sizeof(real));
    linear_train(&p->dyn0, s, (size_t)N, t->dyn_pre, t->dyn_act, 1);
    linear_forward(&p->dyn2, t->dyn_act, (size_t)N, coef, 0);
    for (int n = 0; n < N; n++) {
        const real *fr = geo->frame + 9 * n, *cf = coef + 3 * n;
        for (int k = 0; k < 3; k++)
            pgrad[3 * n + k] += (cf[0] * fr[3 * k] + cf[1] * fr[3 * k + 1] + cf[2] * fr[3 * k + 2]) / (real)L;
    }
}

/* dgrad (N, 3): gradient of the pos_grad sum; the gradient of s is added to ds */
static void pos_grad_backward(const Ctx *cx, const Geometry *geo, Tape *tp, const TapeUpd *t, const Grad *sink, const real *dgrad, real *ds) {
    const LEFTNetParams *p = &cx->m->net;
    const int H = cx->m->cfg.hidden_channels, L = cx->m->cfg.num_layers, N = tp->N;
    real *dc = tp->g_n1, *da = tp->g_n2;
    for (int n = 0; n < N; n++) {
        const real *fr = geo->frame + 9 * n, *g = dgrad + 3 * n;
        for (int j = 0; j < 3; j++) dc[3 * n + j] = (g[0] * fr[j] + g[1] * fr[3 + j] + g[2] * fr[6 + j]) / (real)L;
    }
    linear_backward(sink, &p->dyn2, t->dyn_act, dc, (size_t)N, da, 0);
    silu_backward(t->dyn_pre, da, (size_t)N * (H / 2));
    linear_backward(sink, &p->dyn0, t->dyn_in, da, (size_t)N, ds, 1);
}

/* GatedEquivariantBlock (see gated_output), keeping its activations */
static void gated_output_train(const GatedParams *P, TapeOut *t, int N, const real *xin, const real *vin, real *xout,
                               real *vout) {
    const int hid = P->hidden, out = P->out;
    memcpy(t->xin, xin, (size_t)N * hid * sizeof(real));
    memcpy(t->vin, vin, (size_t)N * 3 * hid * sizeof(real));
    linear_forward(&P->vec1_proj, vin, (size_t)N * 3, t->v1, 0);
    linear_forward(&P->vec2_proj, vin, (size_t)N * 3, t->v2, 0);
    for (int n = 0; n < N; n++) {
        memcpy(t->cat + (size_t)n * 2 * hid, xin + (size_t)n * hid, hid * sizeof(real));
        for (int h = 0; h < hid; h++) {
            const real *r = t->v1 + (size_t)n * 3 * hid + h;
            t->nrm[(size_t)n * hid + h] = RSQRT(r[0] * r[0] + r[hid] * r[hid] + r[2 * hid] * r[2 * hid]);
            t->cat[(size_t)n * 2 * hid + hid + h] = t->nrm[(size_t)n * hid + h];
        }
    }
    linear_train(&P->update_net0, t->cat, (size_t)N, t->u_pre, t->u_act, 1);
    linear_forward(&P->update_net2, t->u_act, (size_t)N, t->u, 0);
    for (int n = 0; n < N; n++)
        for (int o = 0; o < out; o++) {
            xout[(size_t)n * out + o] = t->u[(size_t)n * 2 * out + o];
            for (int q = 0; q < 3; q++)
                vout[((size_t)n * 3 + q) * out + o] = t->u[(size_t)n * 2 * out + out + o] * t->v2[((size_t)n * 3 + q) * out + o];
        }
}

/* dxout (N, out) or NULL, dvout (N, 3, out) -> dxin (N, hid), dvin (N, 3, hid) */
static void gated_output_backward(const GatedParams *P, const TapeOut *t, Tape *tp, const Grad *sink, const real *dxout,
                                  const real *dvout, real *dxin, real *dvin) {
    const int hid = P->hidden, out = P->out, N = tp->N;
    real *du = tp->g_n1, *dua = tp->g_n2, *dcat = tp->g_n3, *dv1 = tp->g_vec2, *dv2 = tp->g_big;
    for (int n = 0; n < N; n++)
        for (int o = 0; o < out; o++) {
            real gate = t->u[(size_t)n * 2 * out + out + o], dg = 0;
            for (int q = 0; q < 3; q++) {
                size_t k = ((size_t)n * 3 + q) * out + o;
                dg += dvout[k] * t->v2[k];
                dv2[k] = dvout[k] * gate;
            }
            du[(size_t)n * 2 * out + o] = dxout ? dxout[(size_t)n * out + o] : 0;
            du[(size_t)n * 2 * out + out + o] = dg;
        }
    linear_backward(sink, &P->update_net2, t->u_act, du, (size_t)N, dua, 0);
    silu_backward(t->u_pre, dua, (size_t)N * hid);
    linear_backward(sink, &P->update_net0, t->cat, dua, (size_t)N, dcat, 0);
    for (int n = 0; n < N; n++)
        for (int h = 0; h < hid; h++) {
            real nr = t->nrm[(size_t)n * hid + h], dn = dcat[(size_t)n * 2 * hid + hid + h];
            dxin[(size_t)n * hid + h] = dcat[(size_t)n * 2 * hid + h];
            for (int q = 0; q < 3; q++) {
                size_t k = ((size_t)n * 3 + q) * hid + h;
                dv1[k] = nr > 0 ? dn * t->v1[k] / nr : 0;
            }
        }
    linear_backward(sink, &P->vec1_proj, t->vin, dv1, (size_t)N * 3, dvin, 0);
    linear_backward(sink, &P->vec2_proj, t->vin, dv2, (size_t)N * 3, dvin, 1);
}

/* LEFTNet.forward (see leftnet_forward) keeping the tape; the geometry is already in cx->w.
 * Leaves dpos and the pos_grad sum in t->dpos, t->pgrad. */
static void leftnet_train(const Ctx *cx, const Geometry *geo, Tape *t) {
    const oard_config *c = &cx->m->cfg;
    const LEFTNetParams *p = &cx->m->net;
    const int H = c->hidden_channels, R = c->num_radial, EW = 3 * H + R, N = t->N, E = t->E;
    real *ew0 = t->ew[0];
    for (int e = 0; e < E; e++) memcpy(ew0 + (size_t)e * EW + 3 * H, geo->rbf + (size_t)e * R, R * sizeof(real));
    radial_train(cx, geo, t, ew0);
    neighbor_emb_train(cx, t, ew0);
    s2v_train(cx, geo, t, ew0);
    edge_scalarization_train(cx, geo, t, ew0);
    linear_train(&p->pos_exp0, geo->pos_prjt, (size_t)N, t->pe_pre, t->pe_act, 1); /* the same on every layer */
    linear_forward(&p->pos_exp1, t->pe_act, (size_t)N, t->pe, 0);
    real *s = t->s, *vec = t->vec;
    memcpy(s, t->s0, (size_t)N * H * sizeof(real));
    memset(vec, 0, (size_t)N * 3 * H * sizeof(real));
    memset(t->pgrad, 0, (size_t)N * 3 * sizeof(real));
    for (int i = 0; i < c->num_layers; i++) {
        if (c->legacy || i == 0)
            for (size_t k = 0; k < (size_t)N * H; k++) s[k] += t->pe[k];
        gcl_train(cx, geo, &t->gcl[i], &p->gcl[i], N, s, t->ew[i], t->ew[i + 1], i == c->num_layers - 1, t->mu);
        equi_message_train(cx, geo, &t->msg[i], &p->msg[i], N, s, vec, t->ew[i + 1]);
        if (c->update) equi_update_train(cx, geo, &t->upd[i], &p->upd[i], N, s, vec, t->g_upd);
        if (c->pos_grad) pos_grad_train(cx, geo, &t->upd[i], N, s, t->pgrad);
    }
    const real *xin = s, *vin = vec;
    for (int k = 0; k < p->n_out; k++) {
        int last = k == p->n_out - 1;
        real *xk = cx->w->A, *vk = last ? t->dpos : cx->w->dx;
        gated_output_train(&p->out[k], &t->out[k], N, xin, vin, xk, vk);
        xin = xk; vin = vk;
    }
}

/* Backward of leftnet_train: ddpos, dgrad (N, 3) are the gradients of dpos and of the
 * pos_grad sum; leaves the gradient of LEFTNet's input h in t->g_h. */
static void leftnet_backward(const Ctx *cx, const Geometry *geo, Tape *t, const Grad *sink, const real *ddpos, const real *dgrad) {
    const oard_config *c = &cx->m->cfg;
    const LEFTNetParams *p = &cx->m->net;
    const int H = c->hidden_channels, EW = 3 * H + c->num_radial, N = t->N, E = t->E;
    real *ds = t->g_s, *dvec = t->g_vec, *dew = t->g_ew, *dpe = t->g_pe;
    if (p->n_out == 1) {
        gated_output_backward(&p->out[0], &t->out[0], t, sink, NULL, ddpos, ds, dvec);
    } else { /* the second block's input gradients in g_e1, g_e2, which the first does not use */
        gated_output_backward(&p->out[1], &t->out[1], t, sink, NULL, ddpos, t->g_e1, t->g_e2);
        gated_output_backward(&p->out[0], &t->out[0], t, sink, t->g_e1, t->g_e2, ds, dvec);
    }
    memset(dew, 0, (size_t)E * EW * sizeof(real));
    memset(dpe, 0, (size_t)N * H * sizeof(real));
    memset(t->g_lin3acc, 0, lin3_acc_rows(c) * round_up((size_t)H, 16) * sizeof(real));
    for (int i = c->num_layers - 1; i >= 0; i--) {
        if (c->pos_grad) pos_grad_backward(cx, geo, t, &t->upd[i], sink, dgrad, ds);
        if (c->update) equi_update_backward(cx, geo, t, &t->upd[i], &p->upd[i], sink, ds, dvec);
        equi_message_backward(cx, geo, t, &t->msg[i], &p->msg[i], sink, ds, dvec, dew);
        gcl_backward(cx, geo, t, &t->gcl[i], &p->gcl[i], sink, t->ew[i], ds, dew, i == c->num_layers - 1, t->mu);
        if (c->legacy || i == 0)
            for (size_t k = 0; k < (size_t)N * H; k++) dpe[k] += ds[k];
    }
    /* ds is now the gradient of s0; the initial vec is zero (no gradient) */
    real *dpa = t->g_s2;
    linear_backward(sink, &p->pos_exp1, t->pe_act, dpe, (size_t)N, dpa, 0);
    silu_backward(t->pe_pre, dpa, (size_t)N * (H / 2));
    linear_backward(sink, &p->pos_exp0, geo->pos_prjt, dpa, (size_t)N, NULL, 0);
    /* the initial edge weights [scalar_i, scalar_j, f, rbf] */
    real *df = t->g_f;
    for (int e = 0; e < E; e++) memcpy(df + (size_t)e * H, dew + (size_t)e * EW + 2 * H, H * sizeof(real));
    edge_scalarization_backward(cx, geo, t, sink, dew, t->g_ne1);
    s2v_backward(cx, geo, t, sink, t->ew[0], t->g_ne1, ds, df);
    neighbor_emb_backward(cx, t, sink, t->ew[0], ds, df);
    radial_backward(cx, geo, t, sink, df);
}

/* ---- the objective ---- */

/* standard normal CDF in the build's precision (upstream evaluates it in the data's dtype) */
static real std_normal_cdf(real x) { return (real)0.5 * ((real)1 + (real)erf((double)(x / (real)sqrt(2.0)))); }

/* log p(h | z0) of the one-hot and charge columns, without constants
 * (log_pxh_given_z0_without_constants), in the build's precision: features of z_t, true
 * one-hot and Z. Constant with respect to the parameters (it reads z_t only). */
static void log_p_features(const oard_config *c, int n, int nf, const real *zt, const real *xh, float sigma0,
                           double *log_cat, double *log_charge) {
    const int K = c->n_elements;
    const real s_cat = (real)(sigma0 * (float)c->norm_values[1]), s_chg = (real)(sigma0 * (float)c->norm_values[2]);
    const real tiny = (real)1e-10, half = (real)0.5;
    real lc = 0, lq = 0, lp[OARD_MAX_ELEM];
    for (int i = 0; i < n; i++) {
        const real *z = zt + (size_t)i * nf + 3, *x = xh + (size_t)i * nf + 3;
        real mx = -INFINITY, sum = 0, row = 0;
        for (int k = 0; k < K; k++) {
            real ctr = z[k] - 1;
            lp[k] = (real)log((double)(std_normal_cdf((ctr + half) / s_cat) - std_normal_cdf((ctr - half) / s_cat) + tiny));
            if (lp[k] > mx) mx = lp[k];
        }
        for (int k = 0; k < K; k++) sum += (real)exp((double)(lp[k] - mx));
        real lse = mx + (real)log((double)sum);
        for (int k = 0; k < K; k++) row += (lp[k] - lse) * x[k];
        lc += row;
        real est = (real)trunc((double)z[K]), ctr = x[K] - est; /* .long() truncates */
        lq += (real)log((double)(std_normal_cdf((ctr + half) / s_chg) - std_normal_cdf((ctr - half) / s_chg) + tiny));
    }
    *log_cat = lc;
    *log_charge = lq;
}

/* What a training sample is scored on: OA-ReactDiff's diffusion (sch) or React-OT's bridge
 * (sb, and coef = 1 / (3 x the batch's TS atoms): F.mse_loss's mean over the whole batch). */
typedef struct {
    int objective;
    const oard_schedule *sch;
    const oard_sb_schedule *sb;
    double coef;
} TrainObjective;

/* React-OT's training input (EnSB.forward, ot_ode): x0 = the TS, x1 = (R + P)/2 re-centred,
 * x_t = mu_x0[t] x0 + mu_x1[t] x1 re-centred (float32 coefficients), fed as the TS positions;
 * R and P as given; label = (x_t - x0) / std_fwd[t]. One sample of n atoms. */
static void bridge_train_input(const oard_sb_schedule *sb, int n, int nf, const real *const xh[3], int t_int, real *const zt[3],
                               real *label) {
    const int off[2] = {0, n};
    real *x1 = label; /* the label's room holds x1 first */
    for (int f = 0; f < 3; f++) memcpy(zt[f], xh[f], (size_t)n * nf * sizeof(real));
    for (int i = 0; i < n; i++)
        for (int k = 0; k < 3; k++) x1[3 * i + k] = (xh[0][(size_t)i * nf + k] + xh[2][(size_t)i * nf + k]) / 2;
    centre_fragment(x1, 3, off, 1);
    const real a = (real)sb->mu_x0[t_int], b = (real)sb->mu_x1[t_int], sd = (real)sb->std_fwd[t_int];
    for (int i = 0; i < n; i++)
        for (int k = 0; k < 3; k++) zt[1][(size_t)i * nf + k] = a * xh[1][(size_t)i * nf + k] + b * x1[3 * i + k];
    centre_fragment(zt[1], nf, off, 1);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < 3; k++) label[3 * i + k] = (zt[1][(size_t)i * nf + k] - xh[1][(size_t)i * nf + k]) / sd;
}

/* A thread's tape memory, kept from one sample to the next (a fresh multi-MB block per
 * sample costs page faults): at least n reals, not zeroed, or NULL. */
typedef struct {
    real *block;
    size_t cap;
} TapeBuf;

static real *tape_buffer(TapeBuf *tb, size_t n) {
    if (n > tb->cap) {
        aligned_free(tb->block);
        tb->block = aligned_malloc(n, sizeof(real));
        tb->cap = tb->block ? n : 0;
    }
    return tb->block;
}

/* One sample: n atoms per fragment; xh[f], noise[f] its rows (n, nf); the gradient of its
 * loss is added to G (which the caller zeroed). terms: OARD_N_TERMS values (bridge: its
 * mean square error in LOSS_T and NLL). */
static int train_sample(const oard_model *m, const BackW *bw, int n_bw, int n, const real *const xh[3],
                        const real *const noise[3], int t_int, const TrainObjective *obj, const real *cond, real *G,
                        double *terms, TapeBuf *tb, char *err) {
    const oard_schedule *sch = obj->sch;
    const int bridge = obj->objective == OARD_OBJECTIVE_BRIDGE;
    const oard_config *c = &m->cfg;
    const int nf = c->node_nfs[0], F = nf - c->pos_dim, I = c->in_hidden_channels;
    const int Eemb = I - c->condition_time - c->condition_nf;
    oard_batch one = {1, &n, 1};
    oard_workspace *ws;
    int rc = oard_workspace_new(m, &one, 0, &ws, err);
    if (rc) return rc;
    const Graph *g = &ws->g;
    Work *w = &ws->w;
    const int N = g->N;
    Ctx cx = {m, g, w, 1, NULL, NULL};
    /* z_t = alpha_t x + sigma_t eps (float32 alpha, sigma as upstream); pos_only: eps_h = 0 */
    const float gamma = bridge ? 0 : oard_gamma(sch, t_int), alpha = oard_alpha(gamma), sigma = oard_sigma(gamma);
    real *zt[3], *label = xcalloc((size_t)n * 3, sizeof(real));
    if (!label) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
    for (int f = 0; f < 3; f++) {
        zt[f] = xcalloc((size_t)n * nf, sizeof(real));
        if (!zt[f]) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
    }
    if (!rc && bridge) bridge_train_input(obj->sb, n, nf, xh, t_int, zt, label);
    for (int f = 0; !rc && !bridge && f < 3; f++)
        for (size_t i = 0; i < (size_t)n * nf; i++) zt[f][i] = (real)alpha * xh[f][i] + (real)sigma * noise[f][i];
    for (int f = 0; !rc && f < 3; f++)
        for (int i = 0; i < n; i++)
            for (int k = 0; k < 3; k++) w->pos[3 * (f * n + i) + k] = zt[f][(size_t)i * nf + k];
    Tape t;
    memset(&t, 0, sizeof(t));
    real *block = NULL;
    Geometry geometry;
    const Geometry *geo = &geometry;
    if (!rc) {
        geometry = leftnet_geometry(&cx, w->pos);
        size_t len = tape_layout(&t, c, (size_t)N, (size_t)g->E, (size_t)geo->ue_start[N], (size_t)n, NULL);
        block = tape_buffer(tb, len);
        if (!block) rc = fail(err, OARD_ERR_NOMEM, "training: cannot allocate %zu values for a %d-atom reaction", len, n);
        else tape_layout(&t, c, (size_t)N, (size_t)g->E, (size_t)geo->ue_start[N], (size_t)n, block);
    }
    if (!rc) {
        /* encoders and the time / condition channels (as dynamics_run) */
        const real tval = bridge ? (real)t_int / (real)obj->sb->T : (real)((float)t_int / (float)sch->T);
        for (int f = 0; f < 3; f++) {
            for (int i = 0; i < n; i++)
                for (int k = 0; k < F; k++) t.feat[f][(size_t)i * F + k] = zt[f][(size_t)i * nf + 3 + k];
            real *enc = w->enc;
            mlp_train(&m->enc[f], t.feat[f], (size_t)n, t.enc_pre[f], t.enc_act[f], enc);
            for (int i = 0; i < n; i++) {
                real *hn = t.h + (size_t)(f * n + i) * I;
                int col = Eemb;
                memcpy(hn, enc + (size_t)i * Eemb, (size_t)Eemb * sizeof(real));
                if (c->condition_time) hn[col++] = tval;
                for (int k = 0; k < c->condition_nf; k++) hn[col++] = cond ? cond[k] : 0;
            }
        }
        leftnet_train(&cx, geo, &t);
        /* predicted noise: velocity ((p + dpos) + gradient) - p, centred per fragment */
        real *eps = w->delta, *d = w->grad;
        int frag_off[2] = {0, n};
        for (int i = 0; i < N; i++)
            for (int k = 0; k < 3; k++) {
                real p = w->pos[3 * i + k];
                eps[3 * i + k] = ((p + t.dpos[3 * i + k]) + t.pgrad[3 * i + k]) - p;
                if (!isfinite(eps[3 * i + k])) rc = fail(err, OARD_ERR_NUMERIC, "training: the denoiser produced NaN/Inf");
            }
        for (int f = 0; f < 3; f++) centre_fragment(eps + (size_t)3 * f * n, 3, frag_off, 1);
        /* the loss (compute_loss, l2, training) and its gradient with respect to eps */
        double lt = 0, l0x = 0, l0c = 0, l0q = 0;
        if (bridge) { /* React-OT: only the TS position output, against the label */
            memset(d, 0, (size_t)9 * n * sizeof(real));
            for (int i = 0; i < n; i++)
                for (int k = 0; k < 3; k++) {
                    double r = (double)eps[3 * (n + i) + k] - (double)label[3 * i + k];
                    lt += r * r;
                    d[3 * (n + i) + k] = (real)(2.0 * obj->coef * r);
                }
            lt /= 3.0 * n;
        }
        for (int f = 0; f < 3 && !bridge; f++) {
            double err2 = 0, coef = c->loss_scales[f] / (3.0 * n) * (t_int == 0 ? 0.5 : 1.0);
            for (int i = 0; i < n; i++)
                for (int k = 0; k < 3; k++) {
                    double r = (double)noise[f][(size_t)i * nf + k] - (double)eps[3 * (f * n + i) + k];
                    err2 += r * r;
                    d[3 * (f * n + i) + k] = (real)(-2.0 * coef * r);
                }
            if (t_int == 0) {
                double lc, lq;
                l0x += 0.5 * err2 * c->loss_scales[f] / (3.0 * n);
                log_p_features(c, n, nf, zt[f], xh[f], sigma, &lc, &lq);
                l0c -= lc; l0q -= lq;
            } else {
                lt += err2 * c->loss_scales[f] / (3.0 * n);
            }
        }
        terms[OARD_TERM_LOSS_T] = lt; terms[OARD_TERM_LOSS_0_X] = l0x;
        terms[OARD_TERM_LOSS_0_CAT] = l0c; terms[OARD_TERM_LOSS_0_CHARGE] = l0q;
        terms[OARD_TERM_NLL] = lt + l0x + l0c + l0q;
        if (!rc && G) {
            for (int f = 0; f < 3; f++) centre_fragment(d + (size_t)3 * f * n, 3, frag_off, 1); /* centring is symmetric */
            size_t wmax = 0; /* the widest layer input or output */
            for (int i = 0; i < m->file.n_t; i++)
                for (int k = 0; k < 2 && m->file.t[i].ld; k++)
                    if ((size_t)m->file.t[i].dims[k] > wmax) wmax = (size_t)m->file.t[i].dims[k];
            real *scratch = aligned_calloc(2 * BACK_ROWS * round_up(wmax + TILE_N, TILE_N), sizeof(real));
            if (!scratch) {
                rc = fail(err, OARD_ERR_NOMEM, "training: out of memory");
                goto done;
            }
            Grad sink = {m, G, bw, n_bw, scratch, scratch + BACK_ROWS * round_up(wmax + TILE_N, TILE_N)};
            leftnet_backward(&cx, geo, &t, &sink, d, d);
            for (int f = 0; f < 3; f++) { /* into the encoders: the columns of h they produced */
                real *dy = w->enc_tmp;
                for (int i = 0; i < n; i++)
                    memcpy(dy + (size_t)i * Eemb, t.g_h + (size_t)(f * n + i) * I, (size_t)Eemb * sizeof(real));
                mlp_backward(&sink, &m->enc[f], t.feat[f], (size_t)n, t.enc_pre[f], t.enc_act[f], dy, NULL, 0, t.g_n1);
            }
            aligned_free(scratch);
        }
    }
done:
    for (int f = 0; f < 3; f++) free(zt[f]);
    free(label);
    oard_workspace_free(ws);
    return rc;
}

int oard_train_loss(const oard_model *m, const oard_batch *batch, const oard_real *const xh[], const oard_real *cond,
                    const int *t_int, oard_rng *rng, double *loss, double *terms, oard_real *grad, char *err) {
    const oard_config *c = &m->cfg;
    if (c->kind != OARD_KIND_DENOISER) return fail(err, OARD_ERR_MODEL, "training needs a denoiser model");
    if (!c->pos_only) return fail(err, OARD_ERR_MODEL, "training a model that generates features (pos_only=0) is not supported");
    for (int k = 0; k < 3; k++)
        if (c->norm_values[k] != 1 || c->norm_biases[k] != 0)
            return fail(err, OARD_ERR_MODEL, "training with normalisation values other than 1 / biases other than 0 is not supported");
    if (!batch || batch->n_samples <= 0 || !batch->sizes) return fail(err, OARD_ERR_ARG, "training: no samples");
    const int B = batch->n_samples, nf = c->node_nfs[0], F = nf - c->pos_dim;
    const int bridge = c->objective == OARD_OBJECTIVE_BRIDGE;
    oard_schedule sch;
    oard_sb_schedule sb;
    memset(&sch, 0, sizeof(sch)); memset(&sb, 0, sizeof(sb));
    int rc = bridge ? oard_sb_schedule_init(&sb, c->sb_timesteps, c->sb_beta_max, c->sb_power, c->sb_inv_power, err)
                    : oard_schedule_init(&sch, c->training_schedule, c->training_timesteps, c->training_precision, err);
    if (rc) return rc;
    const int t_max = bridge ? sb.T - 1 : sch.T; /* diffusion: t in 0..T; bridge: randint(0, T) */
    int *off = xcalloc((size_t)B + 1, sizeof(int));
    for (int b = 0; off && b < B; b++) {
        if (batch->sizes[b] <= 0) rc = fail(err, OARD_ERR_ARG, "training: sample %d has no atoms", b);
        if (t_int[b] < 0 || t_int[b] > t_max)
            rc = fail(err, OARD_ERR_ARG, "training: t_int[%d] = %d is outside 0..%d", b, t_int[b], t_max);
        off[b + 1] = off[b] + batch->sizes[b];
    }
    const int NF = off ? off[B] : 0;
    const size_t P = m->params_used;
    real *x[3] = {0}, *noise[3] = {0}, *tmp = xcalloc((size_t)NF * (F > 3 ? F : 3) + 1, sizeof(real));
    real *G = grad ? aligned_calloc((size_t)B * P, sizeof(real)) : NULL;
    double *tm = xcalloc((size_t)B * OARD_N_TERMS, sizeof(double));
    if (!off || !tmp || !tm || (grad && !G)) rc = rc ? rc : fail(err, OARD_ERR_NOMEM, "training: out of memory");
    for (int f = 0; !rc && f < 3; f++) {
        x[f] = xcalloc((size_t)NF * nf, sizeof(real));
        noise[f] = xcalloc((size_t)NF * nf, sizeof(real));
        if (!x[f] || !noise[f]) rc = fail(err, OARD_ERR_NOMEM, "training: out of memory");
    }
    /* clean inputs, positions centred per fragment and sample (upstream's data are) */
    for (int f = 0; !rc && f < 3; f++) {
        if (!check_finite(xh[f], (size_t)NF * nf)) rc = fail(err, OARD_ERR_NUMERIC, "training input: fragment %d holds NaN or Inf", f);
        memcpy(x[f], xh[f], (size_t)NF * nf * sizeof(real));
        if (!rc) centre_fragment(x[f], nf, off, B);
    }
    /* one combined draw: per fragment positions (centred per sample), then features (the
     * bridge draws nothing: ot_ode) */
    for (int f = 0; !rc && !bridge && f < 3; f++) {
        rc = oard_rng_normal(rng, tmp, (size_t)NF, 3, err);
        if (rc) break;
        centre_fragment(tmp, 3, off, B);
        for (int i = 0; i < NF; i++)
            for (int k = 0; k < 3; k++) noise[f][(size_t)i * nf + k] = tmp[3 * i + k];
        rc = oard_rng_normal(rng, tmp, (size_t)NF, (size_t)F, err); /* drawn, then zeroed: pos_only */
    }
    int n_bw = 0;
    real *bw_block = NULL;
    BackW *bw = (rc || !grad) ? NULL : back_weights(m, &n_bw, &bw_block);
    if (!rc && grad && !bw) rc = fail(err, OARD_ERR_NOMEM, "training: out of memory");
    char *errs = rc ? NULL : xcalloc((size_t)B, OARD_ERRLEN);
    int *rcs = rc ? NULL : xcalloc((size_t)B, sizeof(int));
    if (!rc && (!errs || !rcs)) rc = fail(err, OARD_ERR_NOMEM, "training: out of memory");
    TrainObjective obj = {c->objective, &sch, &sb, 1.0 / (3.0 * NF)};
    int *order = rc ? NULL : xcalloc((size_t)B, sizeof(int));
    if (!rc && !order) rc = fail(err, OARD_ERR_NOMEM, "training: out of memory");
    if (!rc) {
        const int nt = batch_threads(batch);
        (void)nt; /* only the OpenMP pragma reads it */
        /* largest samples first (their cost grows as n^2), so that the threads finish
         * together; each sample has its own slot of G, so the order changes no result */
        for (int b = 0; b < B; b++) order[b] = b;
        for (int a = 1; a < B; a++)
            for (int k = a; k > 0 && batch->sizes[order[k - 1]] < batch->sizes[order[k]]; k--) {
                int tmp_b = order[k];
                order[k] = order[k - 1]; order[k - 1] = tmp_b;
            }
#pragma omp parallel num_threads(nt)
        {
            TapeBuf tb = {NULL, 0}; /* one tape per thread, reused from sample to sample */
#pragma omp for schedule(dynamic, 1)
            for (int k = 0; k < B; k++) {
                const int b = order[k];
                const real *xs[3], *ns[3];
                for (int f = 0; f < 3; f++) { xs[f] = x[f] + (size_t)off[b] * nf; ns[f] = noise[f] + (size_t)off[b] * nf; }
                rcs[b] = train_sample(m, bw, n_bw, batch->sizes[b], xs, ns, t_int[b], &obj,
                                      cond ? cond + (size_t)b * c->condition_nf : NULL, G ? G + (size_t)b * P : NULL,
                                      tm + (size_t)b * OARD_N_TERMS, &tb, errs + (size_t)b * OARD_ERRLEN);
            }
            aligned_free(tb.block);
        }
        for (int b = 0; b < B && !rc; b++)
            if (rcs[b]) rc = fail(err, rcs[b], "sample %d: %s", b, errs + (size_t)b * OARD_ERRLEN);
    }
    if (!rc) {
        double sum = 0;
        for (int b = 0; b < B; b++) /* bridge: F.mse_loss over every TS coordinate of the batch */
            sum += tm[(size_t)b * OARD_N_TERMS + OARD_TERM_NLL] * (bridge ? 3.0 * batch->sizes[b] * obj.coef : 1.0);
        if (loss) *loss = bridge ? sum : sum / B;
        if (terms) memcpy(terms, tm, (size_t)B * OARD_N_TERMS * sizeof(double));
        if (grad) /* the batch mean (bridge: the sum, coef holds the mean), in sample order whatever the thread count */
#pragma omp parallel for num_threads(batch_threads(batch)) schedule(static)
            for (size_t k = 0; k < P; k++) {
                real s = 0;
                for (int b = 0; b < B; b++) s += G[(size_t)b * P + k];
                grad[k] = bridge ? s : s / (real)B;
            }
    }
    for (int f = 0; f < 3; f++) { free(x[f]); free(noise[f]); }
    free(tmp); free(tm); free(off); free(errs); free(rcs); free(bw); free(order);
    aligned_free(G);
    aligned_free(bw_block);
    oard_schedule_free(&sch);
    oard_sb_schedule_free(&sb);
    return rc;
}

/* ------------------------------------------------------------------------------------ */
/* Training: optimizer and checkpoints                                                     */
/*
 * What upstream's trainer (trainer/pl_trainer.py DDPMModule under PyTorch Lightning,
 * trainer/train_ts1x.py) does around the loss, on the flat parameter arena:
 *   - oard_model_save: a weights file (docs/weights_format.md) of a model and an arena;
 *   - oard_model_init: a freshly initialised denoiser, as upstream's constructors make one;
 *   - oard_optim_*: torch.optim.AdamW(amsgrad) with upstream's adaptive gradient clipping
 *     and an optional EMA of the weights;
 *   - oard_checkpoint_*: model, optimizer state and the caller's state in one file.
 * Files are written to a new temporary file beside the target (tmp_create) and renamed, so
 * a failure leaves no partial file.
 */

static void wr_u32(unsigned char *p, uint32_t v) {
    for (int k = 0; k < 4; k++) p[k] = (unsigned char)(v >> (8 * k));
}
static void wr_u64(unsigned char *p, uint64_t v) {
    wr_u32(p, (uint32_t)v);
    wr_u32(p + 4, (uint32_t)(v >> 32));
}
static uint64_t round64(uint64_t x) { return (x + 63) & ~(uint64_t)63; }

/* ---- writing a file atomically ---- */
typedef struct {
    const void *p;
    size_t n;
} Piece;

/* A new temporary file beside path for writing, named PATH.tmp.XXXXXX (six random
 * characters; tmp receives the name, n >= strlen(path) + 12). It is created with
 * O_CREAT | O_EXCL | O_NOFOLLOW, so a file or symbolic link planted at the name is never
 * opened or followed (another name is tried), and with mode 0666 less the umask: the
 * permissions the final file gets. NULL with errno set when it cannot be created. */
static FILE *tmp_create(const char *path, char *tmp, size_t n) {
#if defined(__unix__) || defined(__APPLE__)
    static const char chars[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_nsec ^ (uint64_t)ts.tv_sec << 30 ^ (uint64_t)getpid() << 40 ^ (uint64_t)(uintptr_t)tmp;
    for (int attempt = 0; attempt < 100; attempt++) {
        uint64_t z = (x += 0x9E3779B97F4A7C15ull); /* splitmix64 */
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        char suffix[7];
        for (int k = 0; k < 6; k++) suffix[k] = chars[(z >> (8 * k)) % 62];
        suffix[6] = 0;
        if (snprintf(tmp, n, "%s.tmp.%s", path, suffix) >= (int)n) { errno = ENAMETOOLONG; return NULL; }
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
        if (fd < 0 && errno == EEXIST) continue;
        if (fd < 0) return NULL;
        FILE *f = fdopen(fd, "wb");
        if (!f) {
            int e = errno;
            close(fd); unlink(tmp);
            errno = e;
        }
        return f;
    }
    errno = EEXIST;
    return NULL;
#else
    snprintf(tmp, n, "%s.tmp", path);
    return fopen(tmp, "wb");
#endif
}

/* What path is when it exists and is not a regular file (an output is never put in the
 * place of a device, a directory or a symbolic link, say to /proc/self/fd/1); else NULL. */
static const char *non_regular(const char *path) {
#if defined(__unix__) || defined(__APPLE__)
    struct stat st;
    if (lstat(path, &st) != 0 || S_ISREG(st.st_mode)) return NULL;
    return S_ISDIR(st.st_mode) ? "a directory" : S_ISLNK(st.st_mode) ? "a symbolic link" : S_ISFIFO(st.st_mode) ? "a FIFO"
         : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device" : "a special file";
#else
    (void)path;
    return NULL;
#endif
}

/* The pieces, in order, into path via a temporary file beside it (tmp_create; flushed to
 * disk, then renamed). */
static int write_atomic(const char *path, const Piece *pc, int np, char *err) {
    const char *what = non_regular(path);
    if (what) return fail(err, OARD_ERR_IO, "%s: exists and is %s, not a regular file; not replaced", path, what);
    size_t len = strlen(path) + 32;
    char *tmp = malloc(len);
    if (!tmp) return fail(err, OARD_ERR_NOMEM, "%s: out of memory", path);
    FILE *f = tmp_create(path, tmp, len);
    if (!f) {
        int e = errno;
        free(tmp);
        return fail(err, OARD_ERR_IO, "%s: cannot write: %s", path, strerror(e));
    }
    int bad = 0, e = 0;
    for (int i = 0; i < np && !bad; i++)
        if (pc[i].n && fwrite(pc[i].p, 1, pc[i].n, f) != pc[i].n) { bad = 1; e = errno; }
    if (!bad && fflush(f) != 0) { bad = 1; e = errno; }
#if defined(__unix__) || defined(__APPLE__)
    if (!bad && fsync(fileno(f)) != 0 && errno != EINVAL && errno != EROFS) { bad = 1; e = errno; }
#endif
    if (fclose(f) != 0 && !bad) { bad = 1; e = errno; }
    int rc = OARD_OK;
    if (bad) {
        remove(tmp);
        rc = fail(err, OARD_ERR_IO, "%s: write failed: %s", path, strerror(e ? e : EIO));
    } else if (rename(tmp, path) != 0) {
        e = errno;
        remove(tmp);
        rc = fail(err, OARD_ERR_IO, "%s: cannot rename into place: %s", path, strerror(e));
    }
    free(tmp);
    return rc;
}

/* ---- weights images ---- */
typedef struct {
    const char *name;
    int ndim;
    int64_t dims[4];
} TensorDesc;

static size_t desc_numel(const TensorDesc *t) {
    size_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= (size_t)t->dims[d];
    return n;
}

/* The directory line "tensor NAME DTYPE OFFSET NBYTES NDIM D0 ..." and its newline: its
 * length; written to out (no NUL) when out is not NULL and n leaves room for it. */
static size_t tensor_line(char *out, size_t n, const TensorDesc *t, int f64, uint64_t off) {
    char line[512], dims[4 * 22] = "";
    for (int d = 0; d < t->ndim && d < 4; d++)
        snprintf(dims + strlen(dims), sizeof(dims) - strlen(dims), " %lld", (long long)t->dims[d]);
    int len = snprintf(line, sizeof(line), "tensor %s %s %llu %llu %d%s", t->name, f64 ? "f64" : "f32",
                       (unsigned long long)off, (unsigned long long)(desc_numel(t) * (f64 ? 8 : 4)), t->ndim, dims);
    if (out && (size_t)len + 1 <= n && (size_t)len < sizeof(line)) { memcpy(out, line, (size_t)len); out[len] = '\n'; }
    return (size_t)len + 1;
}

/* the values of tensor i in upstream's row-major order */
typedef int (*tensor_fill_fn)(void *ctx, int i, double *out, char *err);

/* A weights image (docs/weights_format.md, the layout tools/ckpt2bin.py writes) in memory:
 * header, the metadata lines keys[i] vals[i], the tensor directory, every tensor 64-byte
 * aligned after the previous one, CRC-32. what names the image in messages. */
static int image_build(int kind, int n_meta, const char *const *keys, const char *const *vals, int n_t,
                       const TensorDesc *t, int f64, tensor_fill_fn fill, void *ctx, const char *what,
                       unsigned char **out, size_t *out_size, char *err) {
    *out = NULL; *out_size = 0;
    size_t esz = f64 ? 8 : 4, meta_size = 0, max_numel = 0;
    uint64_t *off = xcalloc((size_t)n_t + 1, sizeof(uint64_t)), pos = 0, data_size = 0;
    if (!off) return fail(err, OARD_ERR_NOMEM, "%s: out of memory", what);
    for (int i = 0; i < n_meta; i++) meta_size += strlen(keys[i]) + strlen(vals[i]) + 2;
    for (int i = 0; i < n_t; i++) {
        size_t numel = desc_numel(&t[i]);
        if (numel > max_numel) max_numel = numel;
        pos = round64(pos);
        off[i] = pos;
        pos += numel * esz;
        data_size = pos;
        meta_size += tensor_line(NULL, 0, &t[i], f64, off[i]);
    }
    uint64_t data_offset = round64(WFILE_HEADER + meta_size), file_size = data_offset + data_size;
    unsigned char *b = calloc((size_t)file_size, 1);
    double *vals_buf = xcalloc(max_numel ? max_numel : 1, sizeof(double));
    if (!b || !vals_buf) {
        free(off); free(b); free(vals_buf);
        return fail(err, OARD_ERR_NOMEM, "%s: cannot allocate %llu bytes", what, (unsigned long long)file_size);
    }
    memcpy(b, WFILE_MAGIC, 8); /* "OARDIFF" and its NUL */
    wr_u32(b + 8, WFILE_VERSION);
    wr_u32(b + 12, (uint32_t)kind);
    wr_u64(b + 16, WFILE_HEADER);
    wr_u64(b + 24, meta_size);
    wr_u64(b + 32, data_offset);
    wr_u64(b + 40, data_size);
    wr_u64(b + 48, file_size);
    wr_u32(b + 60, (uint32_t)n_t);
    /* the text fills the metadata block exactly: no terminating NUL is written (sprintf's
     * would land one byte past the image when the text ends where the data starts) */
    char *p = (char *)b + WFILE_HEADER;
    for (int i = 0; i < n_meta; i++) {
        size_t nk = strlen(keys[i]), nv = strlen(vals[i]);
        memcpy(p, keys[i], nk); p[nk] = ' ';
        memcpy(p + nk + 1, vals[i], nv); p[nk + 1 + nv] = '\n';
        p += nk + nv + 2;
    }
    for (int i = 0; i < n_t; i++) p += tensor_line(p, (size_t)(b + data_offset - (unsigned char *)p), &t[i], f64, off[i]);
    int rc = OARD_OK;
    for (int i = 0; !rc && i < n_t; i++) {
        size_t numel = desc_numel(&t[i]);
        rc = fill(ctx, i, vals_buf, err);
        unsigned char *dst = b + data_offset + off[i];
        for (size_t k = 0; !rc && k < numel; k++) {
            double v = vals_buf[k];
            float f = (float)v;
            if (!isfinite(v) || (!f64 && !isfinite(f))) {
                rc = fail(err, OARD_ERR_NUMERIC, "%s: tensor %s holds a value that is NaN, infinite or beyond float32 (%g); nothing written",
                          what, t[i].name, v);
                break;
            }
            if (f64) memcpy(dst + 8 * k, &v, 8); /* little-endian hosts, as the loader */
            else memcpy(dst + 4 * k, &f, 4);
        }
    }
    free(off); free(vals_buf);
    if (rc) {
        free(b);
        return rc;
    }
    uint32_t c = oard_crc32(0, b, 56);
    wr_u32(b + 56, oard_crc32(c, b + 60, (size_t)file_size - 60));
    *out = b; *out_size = (size_t)file_size;
    return OARD_OK;
}

/* The configuration an image describes (its metadata only; the tensors are not read). */
static int image_config(const char *what, unsigned char *buf, size_t size, oard_config *c, char *err) {
    wfile w;
    memset(&w, 0, sizeof(w));
    w.path = what; w.buf = buf; w.size = size;
    int rc = wfile_parse(&w, err);
    if (!rc) rc = parse_config(&w, c, err);
    w.buf = NULL; /* the caller's */
    wfile_free(&w);
    return rc;
}

/* ---- oard_model_save ---- */
typedef struct {
    const oard_model *m;
    const real *params;
} ArenaFill;

static int fill_from_arena(void *ctx, int i, double *out, char *err) {
    (void)err;
    const ArenaFill *a = ctx;
    oard_tensor_get(a->m, i, a->params, out);
    return OARD_OK;
}

/* a metadata key and value the format can hold */
static int check_meta_item(const char *what, const char *key, const char *val, char *err) {
    if (!key || !*key || !val) return fail(err, OARD_ERR_ARG, "%s: metadata list is not key, value pairs", what);
    for (const char *q = key; *q; q++)
        if (isspace((unsigned char)*q) || !isprint((unsigned char)*q))
            return fail(err, OARD_ERR_ARG, "%s: metadata key '%s' has a space or control character", what, key);
    if (!strcmp(key, "tensor") || key[0] == '#')
        return fail(err, OARD_ERR_ARG, "%s: '%s' cannot be a metadata key", what, key);
    if (strchr(val, '\n') || strchr(val, '\r'))
        return fail(err, OARD_ERR_ARG, "%s: metadata '%s' has a line break in its value", what, key);
    if (!strcmp(key, "description") && strlen(val) > 511)
        return fail(err, OARD_ERR_ARG, "%s: description longer than 511 bytes", what);
    if (!strcmp(key, "source_file") && strlen(val) > 255)
        return fail(err, OARD_ERR_ARG, "%s: source_file longer than 255 bytes", what);
    return OARD_OK;
}

/* same tensors: every field the tensor shapes and the schedule tables depend on */
static int same_architecture(const oard_config *a, const oard_config *b) {
    return a->kind == b->kind && a->num_layers == b->num_layers && a->hidden_channels == b->hidden_channels &&
           a->num_radial == b->num_radial && a->in_hidden_channels == b->in_hidden_channels &&
           a->cutoff == b->cutoff && a->reflect_equiv == b->reflect_equiv && a->legacy == b->legacy &&
           a->update == b->update && a->pos_grad == b->pos_grad && a->single_layer_output == b->single_layer_output &&
           a->object_aware == b->object_aware && a->for_conf == b->for_conf && a->n_fragments == b->n_fragments &&
           !memcmp(a->node_nfs, b->node_nfs, sizeof(a->node_nfs)) && a->pos_dim == b->pos_dim &&
           a->condition_nf == b->condition_nf && a->condition_time == b->condition_time &&
           a->n_elements == b->n_elements && !memcmp(a->element_z, b->element_z, sizeof(a->element_z)) &&
           a->training_timesteps == b->training_timesteps && a->sampling_timesteps == b->sampling_timesteps &&
           !strcmp(a->training_schedule, b->training_schedule) && !strcmp(a->sampling_schedule, b->sampling_schedule) &&
           a->training_precision == b->training_precision && a->sampling_precision == b->sampling_precision;
}

/* The image of model m with the arena params, its metadata with meta's replacements and
 * additions; checked to describe the same architecture. */
static int model_image(const oard_model *m, const real *params, const char *const *meta, int f64, const char *what,
                       unsigned char **out, size_t *size, char *err) {
    *out = NULL; *size = 0;
    int n_over = 0, rc = OARD_OK;
    while (meta && meta[2 * n_over]) {
        rc = check_meta_item(what, meta[2 * n_over], meta[2 * n_over + 1], err);
        if (rc) return rc;
        n_over++;
    }
    const wfile *w = &m->file;
    const char **keys = xcalloc((size_t)(w->n_meta + n_over) + 1, sizeof(char *));
    const char **vals = xcalloc((size_t)(w->n_meta + n_over) + 1, sizeof(char *));
    TensorDesc *td = xcalloc((size_t)w->n_t + 1, sizeof(TensorDesc));
    if (!keys || !vals || !td) rc = fail(err, OARD_ERR_NOMEM, "%s: out of memory", what);
    int n = 0;
    for (int i = 0; !rc && i < w->n_meta; i++) { keys[n] = w->keys[i]; vals[n++] = w->vals[i]; }
    for (int k = 0; !rc && k < n_over; k++) {
        int j = 0;
        while (j < n && strcmp(keys[j], meta[2 * k])) j++;
        if (j == n) keys[n++] = meta[2 * k]; /* added at the end, repeated keys replace */
        vals[j] = meta[2 * k + 1];
    }
    for (int i = 0; !rc && i < w->n_t; i++) {
        td[i].name = w->t[i].name; td[i].ndim = w->t[i].ndim;
        memcpy(td[i].dims, w->t[i].dims, sizeof(td[i].dims));
    }
    ArenaFill af = {m, params ? params : m->params};
    if (!rc) rc = image_build(m->cfg.kind, n, keys, vals, w->n_t, td, f64, fill_from_arena, &af, what, out, size, err);
    free(keys); free(vals); free(td);
    if (!rc) {
        oard_config c;
        rc = image_config(what, *out, *size, &c, err);
        if (rc == OARD_ERR_FORMAT || rc == OARD_ERR_MODEL) rc = OARD_ERR_ARG; /* the metadata given is at fault */
        if (!rc && !same_architecture(&c, &m->cfg))
            rc = fail(err, OARD_ERR_ARG, "%s: the metadata given changes the model's architecture; refused", what);
        if (rc) { free(*out); *out = NULL; *size = 0; }
    }
    return rc;
}

int oard_model_save(const oard_model *m, const oard_real *params, const char *const *meta, int f64, const char *path,
                    char *err) {
    if (!m || !path) return fail(err, OARD_ERR_ARG, "model_save: no model or no path");
    unsigned char *img;
    size_t size;
    int rc = model_image(m, params, meta, f64, path, &img, &size, err);
    if (rc) return rc;
    Piece pc = {img, size};
    rc = write_atomic(path, &pc, 1, err);
    free(img);
    return rc;
}

/* ---- a diffusion denoiser as a bridge model ----
 * React-OT fine-tunes the object-aware LEFTNet of an OA-ReactDiff model: the same tensors
 * without the diffusion schedules (keys and gamma tables), objective "bridge" and the SB
 * schedule's arguments. The parameters are written in the build's precision, unchanged. */
typedef struct {
    const oard_model *m;
    const int *index; /* model tensor of each tensor kept */
} BridgeFill;

static int fill_kept(void *ctx, int i, double *out, char *err) {
    (void)err;
    const BridgeFill *b = ctx;
    oard_tensor_get(b->m, b->index[i], b->m->params, out);
    return OARD_OK;
}

int oard_model_to_bridge(const oard_model *m, int T, double beta_max, double power, double inv_power, oard_model **mp,
                         char *err) {
    static const char *const dropped[] = {"objective", "sampling_schedule", "sampling_timesteps", "sampling_precision",
                                          "training_schedule", "training_timesteps", "training_precision", "loss_scales",
                                          "sb_timesteps", "sb_beta_max", "sb_power", "sb_inv_power"};
    *mp = NULL;
    if (m->cfg.kind != OARD_KIND_DENOISER) return fail(err, OARD_ERR_MODEL, "a bridge model needs a denoiser");
    const wfile *w = &m->file;
    char sv[4][40];
    snprintf(sv[0], sizeof(sv[0]), "%d", T); snprintf(sv[1], sizeof(sv[1]), "%.17g", beta_max);
    snprintf(sv[2], sizeof(sv[2]), "%.17g", power); snprintf(sv[3], sizeof(sv[3]), "%.17g", inv_power);
    const char *add[5][2] = {{"objective", "bridge"}, {"sb_timesteps", sv[0]}, {"sb_beta_max", sv[1]}, {"sb_power", sv[2]},
                             {"sb_inv_power", sv[3]}};
    const char **keys = xcalloc((size_t)w->n_meta + 6, sizeof(char *)), **vals = xcalloc((size_t)w->n_meta + 6, sizeof(char *));
    TensorDesc *td = xcalloc((size_t)w->n_t + 1, sizeof(TensorDesc));
    int *index = xcalloc((size_t)w->n_t + 1, sizeof(int)), nk = 0, nt = 0, rc = OARD_OK;
    if (!keys || !vals || !td || !index) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
    for (int i = 0; !rc && i < w->n_meta; i++) {
        int drop = 0;
        for (size_t k = 0; k < sizeof(dropped) / sizeof(dropped[0]); k++) drop |= !strcmp(w->keys[i], dropped[k]);
        if (!drop) { keys[nk] = w->keys[i]; vals[nk++] = w->vals[i]; }
    }
    for (int k = 0; !rc && k < 5; k++) { keys[nk] = add[k][0]; vals[nk++] = add[k][1]; }
    for (int i = 0; !rc && i < w->n_t; i++) {
        if (strstr(w->t[i].name, "gamma_module.gamma")) continue;
        td[nt].name = w->t[i].name; td[nt].ndim = w->t[i].ndim;
        memcpy(td[nt].dims, w->t[i].dims, sizeof(td[nt].dims));
        index[nt++] = i;
    }
    unsigned char *img = NULL;
    size_t size = 0;
    BridgeFill bf = {m, index};
    if (!rc) rc = image_build(OARD_KIND_DENOISER, nk, keys, vals, nt, td, sizeof(real) == 8, fill_kept, &bf, "bridge model",
                              &img, &size, err);
    free(keys); free(vals); free(td); free(index);
    if (!rc) rc = model_load_image("bridge model", img, size, OARD_KIND_DENOISER, mp, err);
    return rc;
}

/* ---- oard_model_init: a fresh denoiser ---- */

/* splitmix64/xoshiro256** uniform in [0, 1) with 53 bits */
static double rng_uniform(oard_rng *r) { return (double)(xoshiro256ss(r->s) >> 11) * 0x1.0p-53; }

enum { INIT_LINEAR, INIT_LINEAR_BIAS, INIT_XAVIER, INIT_ZERO, INIT_ONE, INIT_RBF_MEANS, INIT_RBF_BETAS, INIT_GAMMA_TRAIN,
       INIT_GAMMA_SAMPLE };

typedef struct {
    TensorDesc *t;
    int *how;   /* INIT_* */
    int *fan;   /* fan_in (Linear), fan_in + fan_out (Xavier) */
    char **names;
    int n, cap;
} TensorList;

static int tl_add(TensorList *L, const char *name, int how, int fan, int ndim, int64_t d0, int64_t d1) {
    if (L->n == L->cap) {
        int cap = L->cap ? 2 * L->cap : 256;
        TensorDesc *t = realloc(L->t, (size_t)cap * sizeof(*t));
        if (t) L->t = t;
        int *h = realloc(L->how, (size_t)cap * sizeof(int));
        if (h) L->how = h;
        int *f = realloc(L->fan, (size_t)cap * sizeof(int));
        if (f) L->fan = f;
        char **nm = realloc(L->names, (size_t)cap * sizeof(char *));
        if (nm) L->names = nm;
        if (!t || !h || !f || !nm) return OARD_ERR_NOMEM;
        L->cap = cap;
    }
    L->names[L->n] = strdup(name);
    if (!L->names[L->n]) return OARD_ERR_NOMEM;
    TensorDesc *t = &L->t[L->n];
    memset(t, 0, sizeof(*t));
    t->name = L->names[L->n]; t->ndim = ndim; t->dims[0] = d0; t->dims[1] = d1;
    L->how[L->n] = how; L->fan[L->n] = fan;
    L->n++;
    return OARD_OK;
}

static void tl_free(TensorList *L) {
    for (int i = 0; i < L->n; i++) free(L->names[i]);
    free(L->t); free(L->how); free(L->fan); free(L->names);
    memset(L, 0, sizeof(*L));
}

/* nn.Linear(in, out) "<base>.weight" [and "<base>.bias"]: PyTorch's default init, or Xavier
 * for the weight with a zero bias */
static int tl_linear(TensorList *L, const char *base, int in, int out, int bias, int xavier) {
    char name[200];
    snprintf(name, sizeof(name), "%s.weight", base);
    int rc = tl_add(L, name, xavier ? INIT_XAVIER : INIT_LINEAR, xavier ? in + out : in, 2, out, in);
    snprintf(name, sizeof(name), "%s.bias", base);
    if (!rc && bias) rc = tl_add(L, name, xavier ? INIT_ZERO : INIT_LINEAR_BIAS, in, 1, out, 0);
    return rc;
}

/* Every tensor of a denoiser of configuration c, in upstream's state_dict order (the order
 * tools/ckpt2bin.py writes): LEFTNet's modules in registration order, the encoders, the
 * decoders, the two gamma tables. load_leftnet and oard_model_load take the same set. */
static int denoiser_tensors(const oard_config *c, TensorList *L) {
    int H = c->hidden_channels, R = c->num_radial, I = c->in_hidden_channels, rc = 0;
    char b[200];
#define LIN(in, out, bias, xavier, ...)                                                                                \
    do {                                                                                                           \
        snprintf(b, sizeof(b), __VA_ARGS__);                                                                       \
        TRY(tl_linear(L, b, in, out, bias, xavier));                                                               \
    } while (0)
#define VEC(how, n, ...)                                                                                               \
    do {                                                                                                           \
        snprintf(b, sizeof(b), __VA_ARGS__);                                                                       \
        TRY(tl_add(L, b, how, 0, 1, n, 0));                                                                        \
    } while (0)
    const char *P = "ddpm.dynamics.model";
    LIN(I, H, 1, 0, "%s.embedding", P);
    LIN(H, I, 1, 0, "%s.embedding_out", P);
    VEC(INIT_RBF_MEANS, R, "%s.radial_emb.means", P);
    VEC(INIT_RBF_BETAS, R, "%s.radial_emb.betas", P);
    LIN(I, H, 1, 0, "%s.neighbor_emb.embedding", P);
    LIN(H, H, 1, 0, "%s.s2v.lin1.0", P);
    LIN(R, H, 1, 0, "%s.radial_lin.0", P);
    LIN(H, H, 1, 0, "%s.radial_lin.2", P);
    LIN(3, H / 4, 1, 0, "%s.lin3.0", P);
    LIN(H / 4, 1, 1, 0, "%s.lin3.2", P);
    LIN(3, H / 2, 0, 0, "%s.pos_expansion.mlp.0.linear", P);
    LIN(H / 2, H, 0, 0, "%s.pos_expansion.mlp.1.linear", P);
    if (c->legacy) {
        LIN(R, H / 2, 0, 0, "%s.distance_embedding.mlp.0.linear", P);
        LIN(H / 2, H, 0, 0, "%s.distance_embedding.mlp.1.linear", P);
    }
    if (c->pos_grad) {
        LIN(H, H / 2, 1, 0, "%s.dynamic_mlp_modules.0", P);
        LIN(H / 2, 3, 1, 0, "%s.dynamic_mlp_modules.2", P);
    }
    for (int i = 0; i < c->num_layers; i++) { /* GCLMessage: MLPs of core.py, LayerNorm */
        LIN(5 * H + R, H, 1, 0, "%s.gcl_layers.%d.edge_mlp.mlp.0.linear", P, i);
        LIN(H, H, 1, 0, "%s.gcl_layers.%d.edge_mlp.mlp.1.linear", P, i);
        LIN(2 * H, H, 1, 0, "%s.gcl_layers.%d.node_mlp.mlp.0.linear", P, i);
        LIN(H, H, 1, 0, "%s.gcl_layers.%d.node_mlp.mlp.1.linear", P, i);
        LIN(H, 3 * H + R, 1, 0, "%s.gcl_layers.%d.edge_out_trans.mlp.0.linear", P, i);
        LIN(H, 1, 1, 0, "%s.gcl_layers.%d.att_mlp.mlp.0.linear", P, i);
        VEC(INIT_ONE, H, "%s.gcl_layers.%d.x_layernorm.weight", P, i);
        VEC(INIT_ZERO, H, "%s.gcl_layers.%d.x_layernorm.bias", P, i);
    }
    for (int i = 0; i < c->num_layers; i++) { /* EquiMessage.reset_parameters: Xavier for x_proj, rbf_proj */
        LIN(3 * H + R, 3 * H, 1, 0, "%s.message_layers.%d.dir_proj.0", P, i);
        LIN(3 * H, 3 * H, 1, 0, "%s.message_layers.%d.dir_proj.2", P, i);
        LIN(H, H, 0, 1, "%s.message_layers.%d.x_proj.0", P, i);
        LIN(H, 3 * H, 0, 1, "%s.message_layers.%d.x_proj.2", P, i);
        LIN(R, 3 * H, 0, 1, "%s.message_layers.%d.rbf_proj", P, i);
        VEC(INIT_ONE, H, "%s.message_layers.%d.x_layernorm.weight", P, i);
        VEC(INIT_ZERO, H, "%s.message_layers.%d.x_layernorm.bias", P, i);
    }
    for (int i = 0; i < c->num_layers; i++) { /* EquiUpdate.reset_parameters: Xavier for vec_proj, xvec_proj */
        LIN(H, 2 * H, 0, 1, "%s.update_layers.%d.vec_proj", P, i);
        LIN(2 * H, H, 0, 1, "%s.update_layers.%d.xvec_proj.0", P, i);
        LIN(H, 3 * H, 0, 1, "%s.update_layers.%d.xvec_proj.2", P, i);
        LIN(3, 48, 1, 0, "%s.update_layers.%d.lin3.0", P, i);
        LIN(48, 8, 1, 0, "%s.update_layers.%d.lin3.2", P, i);
        LIN(8, 1, 1, 0, "%s.update_layers.%d.lin3.4", P, i);
    }
    LIN(H, 1, 1, 0, "%s.last_layer", P);
    int n_out = c->single_layer_output ? 1 : 2; /* GatedEquivariantBlock.reset_parameters: Xavier, zero biases */
    for (int k = 0; k < n_out; k++) {
        int hid = k == 0 ? H : H / 2, out = (n_out == 1 || k == 1) ? 1 : H / 2;
        LIN(hid, hid, 0, 1, "%s.out_pos.output_network.%d.vec1_proj", P, k);
        LIN(hid, out, 0, 1, "%s.out_pos.output_network.%d.vec2_proj", P, k);
        LIN(2 * hid, hid, 1, 1, "%s.out_pos.output_network.%d.update_net.0", P, k);
        LIN(hid, 2 * out, 1, 1, "%s.out_pos.output_network.%d.update_net.2", P, k);
    }
    int F = c->node_nfs[0] - c->pos_dim, E = c->in_hidden_channels - c->condition_time - c->condition_nf;
    for (int f = 0; f < 3; f++) { /* _base.py build_encoders_decoders */
        LIN(F, 2 * F, 1, 0, "ddpm.dynamics.encoders.%d.mlp.0.linear", f);
        LIN(2 * F, E, 1, 0, "ddpm.dynamics.encoders.%d.mlp.1.linear", f);
    }
    for (int f = 0; f < 3; f++) {
        LIN(E, 2 * F, 1, 0, "ddpm.dynamics.decoders.%d.mlp.0.linear", f);
        LIN(2 * F, F, 1, 0, "ddpm.dynamics.decoders.%d.mlp.1.linear", f);
    }
    VEC(INIT_GAMMA_TRAIN, c->training_timesteps + 1, "%s", "ddpm.schedule.gamma_module.gamma");
    VEC(INIT_GAMMA_SAMPLE, c->sampling_timesteps + 1, "%s", "sampling_schedule.gamma_module.gamma");
#undef LIN
#undef VEC
    return OARD_OK;
}

typedef struct {
    const TensorList *L;
    const oard_config *c;
    oard_rng rng;
    oard_schedule train, sample;
} InitFill;

/* RBFEmb._initial_params in float32 as torch computes it: means = torch.linspace(exp(-cutoff),
 * 1, R) (lower half from the start, upper half from the end), betas = (2/R (1 - exp(-cutoff)))^-2 */
static void rbf_init(const oard_config *c, int means, double *out) {
    int R = c->num_radial;
    float start = (float)exp(-c->cutoff), end = 1.0f;
    if (means) {
        float step = R > 1 ? (end - start) / (float)(R - 1) : 0.0f;
        for (int k = 0; k < R; k++) {
            float v = k < R / 2 ? start + step * (float)k : end - step * (float)(R - k - 1);
            out[k] = R > 1 ? v : start;
        }
    } else {
        float x = (float)(2.0 / R) * (end - start), beta = 1.0f / (x * x);
        for (int k = 0; k < R; k++) out[k] = beta;
    }
}

static int fill_init(void *ctx, int i, double *out, char *err) {
    (void)err;
    InitFill *F = ctx;
    const TensorList *L = F->L;
    size_t n = desc_numel(&L->t[i]);
    double bound = 0;
    switch (L->how[i]) {
    case INIT_LINEAR:
    case INIT_LINEAR_BIAS: bound = 1 / sqrt((double)L->fan[i]); break; /* kaiming_uniform(a=sqrt 5) and its bias */
    case INIT_XAVIER: bound = sqrt(6.0 / (double)L->fan[i]); break;
    case INIT_ZERO: memset(out, 0, n * sizeof(double)); return OARD_OK;
    case INIT_ONE: for (size_t k = 0; k < n; k++) out[k] = 1; return OARD_OK;
    case INIT_RBF_MEANS: rbf_init(F->c, 1, out); return OARD_OK;
    case INIT_RBF_BETAS: rbf_init(F->c, 0, out); return OARD_OK;
    case INIT_GAMMA_TRAIN: for (size_t k = 0; k < n; k++) out[k] = F->train.gamma[k]; return OARD_OK;
    default: for (size_t k = 0; k < n; k++) out[k] = F->sample.gamma[k]; return OARD_OK;
    }
    /* torch.nn.init.uniform_ draws in row-major order of the (out, in) weight */
    for (size_t k = 0; k < n; k++) out[k] = (float)((2 * rng_uniform(&F->rng) - 1) * bound);
    return OARD_OK;
}

/* upstream train_ts1x.py: leftnet_config, node_nfs, schedules, scales (the ckpt2bin keys) */
static const char *const INIT_DEFAULTS[][2] = {
    {"kind", "denoiser"}, {"num_layers", "6"}, {"hidden_channels", "196"}, {"num_radial", "96"},
    {"in_hidden_channels", "8"}, {"cutoff", "10.0"}, {"reflect_equiv", "1"}, {"legacy", "1"}, {"update", "1"},
    {"pos_grad", "0"}, {"single_layer_output", "1"}, {"object_aware", "1"}, {"for_conf", "0"}, {"act_fn", "swish"},
    {"n_fragments", "3"}, {"fragment_names", "R,TS,P"}, {"node_nfs", "9,9,9"}, {"pos_dim", "3"},
    {"condition_nf", "1"}, {"condition_time", "1"}, {"elements", "H:1,C:6,N:7,O:8,F:9"}, {"pos_only", "1"},
    {"norm_values", "1.0,1.0,1.0"}, {"norm_biases", "0.0,0.0,0.0"}, {"sampling_schedule", "polynomial_2"},
    {"sampling_timesteps", "150"}, {"sampling_precision", "1e-05"}, {"training_schedule", "cosine"},
    {"training_timesteps", "5000"}, {"training_precision", "1e-05"}, {"loss_scales", "1.0,2.0,1.0"},
    {"source_file", "none"}, {"source_sha256", "none"}, {"trained", "0"}, {"description", ""},
    {"model_class", "oa_reactdiff.model.leftnet.LEFTNet"}, {"loss_type", "l2"}, {"update_pocket_coords", "1"},
    {"init_config", ""}, {"init_seed", ""}};
#define N_INIT_DEFAULTS ((int)(sizeof(INIT_DEFAULTS) / sizeof(INIT_DEFAULTS[0])))

/* the keys a --init-config may set, with short aliases */
static const char *const INIT_KEYS[][2] = {
    {"layers", "num_layers"}, {"hidden", "hidden_channels"}, {"radial", "num_radial"}, {"num_layers", "num_layers"},
    {"hidden_channels", "hidden_channels"}, {"num_radial", "num_radial"}, {"cutoff", "cutoff"},
    {"in_hidden_channels", "in_hidden_channels"}, {"reflect_equiv", "reflect_equiv"}, {"legacy", "legacy"},
    {"update", "update"}, {"pos_grad", "pos_grad"}, {"single_layer_output", "single_layer_output"},
    {"object_aware", "object_aware"}, {"training_schedule", "training_schedule"},
    {"training_timesteps", "training_timesteps"}, {"training_precision", "training_precision"},
    {"sampling_schedule", "sampling_schedule"}, {"sampling_timesteps", "sampling_timesteps"},
    {"sampling_precision", "sampling_precision"}};
#define N_INIT_KEYS ((int)(sizeof(INIT_KEYS) / sizeof(INIT_KEYS[0])))

int oard_model_init(const char *config, uint64_t seed, oard_model **out, char *err) {
    static const char *const what = "--init-config";
    *out = NULL;
    if (!config) config = "";
    char *spec = strdup(config), vals_buf[N_INIT_DEFAULTS][64], desc[600], seed_s[32];
    const char *keys[N_INIT_DEFAULTS], *vals[N_INIT_DEFAULTS];
    if (!spec) return fail(err, OARD_ERR_NOMEM, "out of memory");
    for (int k = 0; k < N_INIT_DEFAULTS; k++) { keys[k] = INIT_DEFAULTS[k][0]; vals[k] = INIT_DEFAULTS[k][1]; }
    int rc = OARD_OK;
    for (char *item = strtok(spec, ","); item && !rc; item = strtok(NULL, ",")) {
        char *eq = strchr(item, '=');
        if (!eq || eq == item || !eq[1] || strlen(eq + 1) >= sizeof(vals_buf[0])) {
            rc = fail(err, OARD_ERR_ARG, "%s: '%s' is not key=value", what, item);
            break;
        }
        *eq = 0;
        const char *key = NULL;
        for (int k = 0; k < N_INIT_KEYS; k++)
            if (!strcmp(item, INIT_KEYS[k][0])) key = INIT_KEYS[k][1];
        if (!key) {
            rc = fail(err, OARD_ERR_ARG, "%s: unknown key '%s' (layers, hidden, radial, cutoff, in_hidden_channels, "
                                         "reflect_equiv, legacy, update, pos_grad, single_layer_output, object_aware, "
                                         "training_/sampling_ schedule, timesteps, precision)", what, item);
            break;
        }
        for (const char *q = eq + 1; *q && !rc; q++)
            if (isspace((unsigned char)*q) || !isprint((unsigned char)*q))
                rc = fail(err, OARD_ERR_ARG, "%s: value of '%s' has a space or control character", what, item);
        for (int k = 0; !rc && k < N_INIT_DEFAULTS; k++)
            if (!strcmp(keys[k], key)) { snprintf(vals_buf[k], sizeof(vals_buf[k]), "%s", eq + 1); vals[k] = vals_buf[k]; }
    }
    free(spec);
    if (rc) return rc;
    snprintf(seed_s, sizeof(seed_s), "%llu", (unsigned long long)seed);
    for (int k = 0; k < N_INIT_DEFAULTS; k++) {
        if (!strcmp(keys[k], "init_config")) vals[k] = *config ? config : "defaults";
        if (!strcmp(keys[k], "init_seed")) vals[k] = seed_s;
    }
    for (int k = 0; k < N_INIT_DEFAULTS && !rc; k++) rc = check_meta_item(what, keys[k], vals[k], err);
    if (rc) return rc;
    /* the configuration, from an image without tensors through the loader's own checks */
    unsigned char *img;
    size_t size;
    oard_config c;
    rc = image_build(OARD_KIND_DENOISER, N_INIT_DEFAULTS, keys, vals, 0, NULL, 0, NULL, NULL, what, &img, &size, err);
    if (rc) return rc;
    rc = image_config(what, img, size, &c, err);
    free(img);
    if (rc) return rc;
    snprintf(desc, sizeof(desc), "UNTRAINED: freshly initialised LEFTNet %dx%d, %d radial, cutoff %g (seed %llu)",
             c.num_layers, c.hidden_channels, c.num_radial, c.cutoff, (unsigned long long)seed);
    for (int k = 0; k < N_INIT_DEFAULTS; k++)
        if (!strcmp(keys[k], "description")) vals[k] = desc;
    TensorList L;
    memset(&L, 0, sizeof(L));
    InitFill F;
    memset(&F, 0, sizeof(F));
    F.L = &L; F.c = &c;
    oard_rng_seed(&F.rng, seed);
    rc = denoiser_tensors(&c, &L);
    if (rc) rc = fail(err, OARD_ERR_NOMEM, "%s: out of memory", what);
    if (!rc) rc = oard_schedule_init(&F.train, c.training_schedule, c.training_timesteps, c.training_precision, err);
    if (!rc) rc = oard_schedule_init(&F.sample, c.sampling_schedule, c.sampling_timesteps, c.sampling_precision, err);
    if (!rc) rc = image_build(OARD_KIND_DENOISER, N_INIT_DEFAULTS, keys, vals, L.n, L.t, 0, fill_init, &F, what, &img, &size, err);
    oard_schedule_free(&F.train);
    oard_schedule_free(&F.sample);
    tl_free(&L);
    if (rc) return rc;
    return model_load_image(what, img, size, OARD_KIND_DENOISER, out, err);
}

/* ---- the optimizer ---- */
#define CLIP_QUEUE_LEN 50     /* upstream utils.Queue(max_len=50) */
#define CLIP_QUEUE_START 3000 /* DDPMModule.__init__: gradnorm_queue.add(3000) */

struct oard_optim {
    oard_optim_opts o;
    const oard_model *model; /* NULL: a plain vector */
    size_t n;                /* arena values */
    int n_tensors;
    int *tensor_index;       /* model tensor of each optimizer tensor */
    int *span0;              /* spans of optimizer tensor k: span0[k] .. span0[k+1]-1 */
    size_t *span_off, *span_len;
    real *m, *v, *vmax, *ema; /* arena layout; vmax only with amsgrad, ema only with EMA */
    long long *tstep;        /* per tensor, as torch's state['step'] */
    long long step;
    double queue[CLIP_QUEUE_LEN]; /* newest first, as upstream's list with insert(0, x) */
    int qn;
};

void oard_optim_defaults(oard_optim_opts *o) {
    memset(o, 0, sizeof(*o));
    o->lr = 2.5e-4; o->beta1 = 0.9; o->beta2 = 0.999; o->eps = 1e-8; o->weight_decay = 0;
    o->amsgrad = 1; o->clip = 1; o->ema_decay = 0;
}

void oard_optim_free(oard_optim *o) {
    if (!o) return;
    free(o->tensor_index); free(o->span0); free(o->span_off); free(o->span_len); free(o->tstep);
    aligned_free(o->m); aligned_free(o->v); aligned_free(o->vmax); aligned_free(o->ema);
    free(o);
}

long long oard_optim_steps(const oard_optim *o) { return o->step; }
const oard_optim_opts *oard_optim_options(const oard_optim *o) { return &o->o; }
const oard_real *oard_optim_ema(const oard_optim *o) { return o->ema; }

static int check_opts(const oard_optim_opts *o, char *err) {
    if (!(o->lr > 0 && o->lr < 1e3)) return fail(err, OARD_ERR_ARG, "optimizer: learning rate %g out of range", o->lr);
    if (!(o->beta1 >= 0 && o->beta1 < 1 && o->beta2 >= 0 && o->beta2 < 1))
        return fail(err, OARD_ERR_ARG, "optimizer: betas must lie in [0, 1)");
    if (!(o->eps >= 0 && o->eps < 1)) return fail(err, OARD_ERR_ARG, "optimizer: eps %g out of range", o->eps);
    if (!(o->weight_decay >= 0 && o->weight_decay * o->lr < 1))
        return fail(err, OARD_ERR_ARG, "optimizer: weight decay %g out of range", o->weight_decay);
    if (!(o->ema_decay >= 0 && o->ema_decay < 1))
        return fail(err, OARD_ERR_ARG, "optimizer: EMA decay %g must lie in [0, 1)", o->ema_decay);
    return OARD_OK;
}

int oard_optim_new(const oard_model *m, size_t n, const oard_real *params, const oard_optim_opts *opts,
                   oard_optim **out, char *err) {
    *out = NULL;
    int rc = check_opts(opts, err);
    if (rc) return rc;
    if (m) {
        if (n && n != oard_param_size(m)) return fail(err, OARD_ERR_ARG, "optimizer: %zu values, the model's arena has %zu", n, oard_param_size(m));
        n = oard_param_size(m);
    }
    if (!n || !params) return fail(err, OARD_ERR_ARG, "optimizer: no parameters");
    oard_optim *o = xcalloc(1, sizeof(*o));
    if (!o) return fail(err, OARD_ERR_NOMEM, "out of memory");
    o->o = *opts; o->model = m; o->n = n;
    int nt = m ? oard_tensor_count(m) : 1;
    size_t n_spans = 0;
    for (int i = 0; m && i < nt; i++) {
        oard_tensor t;
        oard_tensor_info(m, i, &t);
        if (t.trainable) n_spans += t.ld ? (size_t)(t.ndim == 2 ? t.dims[1] : 1) : 1;
    }
    if (!m) n_spans = 1;
    o->tensor_index = xcalloc((size_t)nt + 1, sizeof(int));
    o->span0 = xcalloc((size_t)nt + 2, sizeof(int));
    o->span_off = xcalloc(n_spans + 1, sizeof(size_t));
    o->span_len = xcalloc(n_spans + 1, sizeof(size_t));
    o->tstep = xcalloc((size_t)nt + 1, sizeof(long long));
    o->m = aligned_calloc(n, sizeof(real));
    o->v = aligned_calloc(n, sizeof(real));
    if (opts->amsgrad) o->vmax = aligned_calloc(n, sizeof(real));
    if (opts->ema_decay > 0) o->ema = aligned_calloc(n, sizeof(real));
    if (!o->tensor_index || !o->span0 || !o->span_off || !o->span_len || !o->tstep || !o->m || !o->v ||
        (opts->amsgrad && !o->vmax) || (opts->ema_decay > 0 && !o->ema)) {
        oard_optim_free(o);
        return fail(err, OARD_ERR_NOMEM, "optimizer: cannot allocate its state (4 x %zu values)", n);
    }
    size_t s = 0;
    if (!m) {
        o->n_tensors = 1; o->span0[1] = 1; o->span_off[0] = 0; o->span_len[0] = n;
    } else {
        for (int i = 0; i < nt; i++) {
            oard_tensor t;
            oard_tensor_info(m, i, &t);
            if (!t.trainable) continue;
            size_t numel = 1;
            for (int d = 0; d < t.ndim; d++) numel *= (size_t)t.dims[d];
            o->tensor_index[o->n_tensors] = i;
            o->span0[o->n_tensors] = (int)s;
            if (t.ld) { /* (in, ld) rows, the first dims[0] values of each */
                size_t rows = (size_t)t.dims[0], cols = numel / rows;
                for (size_t k = 0; k < cols; k++) { o->span_off[s] = t.offset + k * (size_t)t.ld; o->span_len[s++] = rows; }
            } else {
                o->span_off[s] = t.offset; o->span_len[s++] = numel;
            }
            o->n_tensors++;
        }
        o->span0[o->n_tensors] = (int)s;
    }
    if (o->ema) memcpy(o->ema, params, n * sizeof(real));
    o->queue[0] = CLIP_QUEUE_START; o->qn = 1;
    *out = o;
    return OARD_OK;
}

/* numpy's pairwise summation (np.add.reduce on a contiguous float64 array), so that the
 * queue's mean and std are upstream's to the last bit */
static double np_pairwise_sum(const double *a, int n) {
    if (n < 8) {
        double r = 0.;
        for (int i = 0; i < n; i++) r += a[i];
        return r;
    }
    if (n <= 128) {
        double r[8], res;
        int i;
        for (int k = 0; k < 8; k++) r[k] = a[k];
        for (i = 8; i < n - (n % 8); i += 8)
            for (int k = 0; k < 8; k++) r[k] += a[i + k];
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += a[i];
        return res;
    }
    int n2 = n / 2;
    n2 -= n2 % 8;
    return np_pairwise_sum(a, n2) + np_pairwise_sum(a + n2, n - n2);
}

/* upstream: max_grad_norm = 1.5 * queue.mean() + 3 * queue.std() (np.mean, np.std: ddof 0) */
static double clip_limit(const oard_optim *o) {
    double d[CLIP_QUEUE_LEN];
    int n = o->qn;
    double mean = np_pairwise_sum(o->queue, n) / n;
    for (int i = 0; i < n; i++) { d[i] = o->queue[i] - mean; d[i] = d[i] * d[i]; }
    double sd = sqrt(np_pairwise_sum(d, n) / n);
    return 1.5 * mean + 3 * sd;
}

static void queue_add(oard_optim *o, double x) { /* Queue.add: insert(0, x), drop the oldest past max_len */
    int n = o->qn < CLIP_QUEUE_LEN ? o->qn : CLIP_QUEUE_LEN - 1;
    memmove(o->queue + 1, o->queue, (size_t)n * sizeof(double));
    o->queue[0] = x;
    o->qn = n + 1;
}

static const char *optim_tensor_name(const oard_optim *o, int k) {
    oard_tensor t;
    if (!o->model || oard_tensor_info(o->model, o->tensor_index[k], &t)) return "(vector)";
    return t.name;
}

/* The update in the build's precision, operation by operation as torch evaluates it on
 * tensors of that dtype (Python scalars cast to it): float32 as upstream trains, and in the
 * double build exactly torch's float64 arithmetic. No FMA contraction. */
NO_FMA_FN int oard_optim_step(oard_optim *o, oard_real *params, oard_real *grad, oard_step_info *info, char *err) {
    NO_FMA_BEGIN
    double ss = 0;
    for (int k = 0; k < o->n_tensors; k++)
        for (int s = o->span0[k]; s < o->span0[k + 1]; s++) {
            const real *g = grad + o->span_off[s];
            double part = 0;
            for (size_t j = 0; j < o->span_len[s]; j++) part += (double)g[j] * (double)g[j];
            if (!isfinite(part))
                return fail(err, OARD_ERR_NUMERIC, "optimizer step %lld: the gradient of %s is NaN, infinite or beyond 1e150; parameters left unchanged",
                            o->step + 1, optim_tensor_name(o, k));
            ss += part;
        }
    /* utils.get_grad_norm / clip_grad_norm_: the 2-norm over every value, as a tensor of the
     * parameters' dtype (float(grad_norm) in the queue) */
    real rnorm = (real)sqrt(ss);
    double norm = (double)rnorm, limit = 0;
    int clipped = 0;
    if (!isfinite(norm)) return fail(err, OARD_ERR_NUMERIC, "optimizer step %lld: gradient norm overflows; parameters left unchanged", o->step + 1);
    if (o->o.clip) { /* configure_gradient_clipping + torch.nn.utils.clip_grad_norm_ */
        limit = clip_limit(o);
        real coef = (real)limit / (rnorm + (real)1e-6);
        if (coef < 1) { /* grad.mul_(clamp(coef, max=1)): a factor of 1 changes nothing */
            clipped = 1;
            for (int s = 0; s < o->span0[o->n_tensors]; s++) {
                real *g = grad + o->span_off[s];
                for (size_t j = 0; j < o->span_len[s]; j++) g[j] = g[j] * coef;
            }
        }
        queue_add(o, norm > limit ? limit : norm);
    }
    o->step++;
    const double lr = o->o.lr, b1 = o->o.beta1, b2 = o->o.beta2;
    const real decay = (real)(1 - lr * o->o.weight_decay), rb1 = (real)b1, r1b1 = (real)(1 - b1), rb2 = (real)b2,
               r1b2 = (real)(1 - b2), eps = (real)o->o.eps;
    for (int k = 0; k < o->n_tensors; k++) {
        int reached = 0;
        for (int s = o->span0[k]; s < o->span0[k + 1] && !reached; s++)
            for (size_t j = 0; j < o->span_len[s] && !reached; j++) reached = grad[o->span_off[s] + j] != 0;
        if (!reached) continue; /* torch skips a parameter whose .grad is None */
        long long st = ++o->tstep[k];
        /* torch 1.13 _single_tensor_adamw (step as a Python float) */
        double bc1 = 1 - pow(b1, (double)st), bc2 = 1 - pow(b2, (double)st);
        const real neg_step = (real)(-(lr / bc1)), bc2_sqrt = (real)sqrt(bc2);
        for (int s = o->span0[k]; s < o->span0[k + 1]; s++) {
            size_t off = o->span_off[s], len = o->span_len[s];
            real *p = params + off, *m = o->m + off, *v = o->v + off, *vm = o->vmax ? o->vmax + off : NULL;
            const real *g = grad + off;
            for (size_t j = 0; j < len; j++) {
                p[j] = p[j] * decay;                  /* param.mul_(1 - lr * weight_decay) */
                m[j] = m[j] * rb1 + r1b1 * g[j];      /* exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1) */
                v[j] = v[j] * rb2 + r1b2 * g[j] * g[j]; /* exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2) */
                real vj = v[j];
                if (vm) { /* torch.maximum(max_exp_avg_sqs, exp_avg_sq, out=max_exp_avg_sqs) */
                    if (vj > vm[j]) vm[j] = vj;
                    vj = vm[j];
                }
                real denom = (real)sqrt((double)vj) / bc2_sqrt + eps; /* (v.sqrt() / bc2_sqrt).add_(eps) */
                p[j] = p[j] + neg_step * m[j] / denom;  /* param.addcdiv_(exp_avg, denom, value=-step_size) */
            }
        }
    }
    if (o->ema) { /* timm ModelEmaV2.update: ema * d + (1 - d) * model, every value */
        const real d = (real)o->o.ema_decay, r1d = (real)(1 - o->o.ema_decay);
        for (int s = 0; s < o->span0[o->n_tensors]; s++) {
            real *e = o->ema + o->span_off[s];
            const real *p = params + o->span_off[s];
            for (size_t j = 0; j < o->span_len[s]; j++) e[j] = e[j] * d + r1d * p[j];
        }
    }
    if (info) { info->step = o->step; info->grad_norm = norm; info->clip_limit = limit; info->clipped = clipped; }
    return OARD_OK;
}

/* ---- checkpoints ----
 * Layout (little-endian):
 *   0  8  magic "OARDCKPT"           32 8  model image size
 *   8  4  version 1                  40 8  offset of the arrays (64-aligned)
 *  12  4  bytes per real (4, 8)      48 8  file size
 *  16  8  text size                  56 4  CRC-32 of the file without these 4 bytes
 *  24  8  model image offset         60 4  number of arrays
 *  64     text: "key value" lines (the optimizer's optim.* entries, one "array NAME OFFSET
 *         NBYTES" line per array, offset relative to the arrays, then the caller's lines)
 *         model image: a weights file (docs/weights_format.md) with the parameters in the
 *         build's precision (f32 or f64), so they come back exactly
 *         arrays: m, v[, vmax][, ema], each 64-aligned, every tensor in file order in
 *         upstream's layout (as the weights file), so the arena's padding is not stored */
#define CKPT_MAGIC "OARDCKPT"
#define CKPT_VERSION 1u

static size_t flat_size(const oard_model *m) {
    size_t n = 0;
    for (int i = 0; i < m->file.n_t; i++) n += (size_t)(m->file.t[i].nbytes / (m->file.t[i].is_f64 ? 8 : 4));
    return n;
}

/* every tensor of an arena-layout array, in file order and upstream layout (to_flat), or back */
static void flat_copy(const oard_model *m, real *arena, real *flat, int to_flat) {
    size_t pos = 0;
    for (int i = 0; i < m->file.n_t; i++) {
        const wtensor *t = &m->file.t[i];
        size_t n = (size_t)(t->nbytes / (t->is_f64 ? 8 : 4));
        real *a = arena + t->arena_off;
        if (t->ld) {
            size_t rows = (size_t)t->dims[0], cols = n / rows;
            for (size_t r = 0; r < rows; r++)
                for (size_t k = 0; k < cols; k++, pos++) {
                    if (to_flat) flat[pos] = a[k * (size_t)t->ld + r];
                    else a[k * (size_t)t->ld + r] = flat[pos];
                }
        } else {
            if (to_flat) memcpy(flat + pos, a, n * sizeof(real));
            else memcpy(a, flat + pos, n * sizeof(real));
            pos += n;
        }
    }
}

typedef struct {
    char *s;
    size_t n, cap;
    int oom;
} StrBuf;

static void sb_printf(StrBuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (b->oom || len < 0) return;
    if (b->n + (size_t)len + 1 > b->cap) {
        size_t cap = (b->n + (size_t)len + 1) * 2;
        char *s = realloc(b->s, cap);
        if (!s) {
            b->oom = 1;
            return;
        }
        b->s = s; b->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(b->s + b->n, b->cap - b->n, fmt, ap);
    va_end(ap);
    b->n += (size_t)len;
}

static int reserved_ckpt_key(const char *k) {
    return !strncmp(k, "optim.", 6) || !strcmp(k, "array") || !strcmp(k, "precision");
}

int oard_checkpoint_save(const char *path, const oard_model *m, const oard_real *params, const oard_optim *o,
                         const char *const *meta, char *err) {
    if (!m || !o || o->model != m || !path)
        return fail(err, OARD_ERR_ARG, "checkpoint: the optimizer does not belong to the model");
    int rc = OARD_OK;
    for (int k = 0; meta && meta[2 * k]; k++) {
        rc = check_meta_item(path, meta[2 * k], meta[2 * k + 1], err);
        if (!rc && reserved_ckpt_key(meta[2 * k]))
            rc = fail(err, OARD_ERR_ARG, "%s: checkpoint key '%s' is reserved", path, meta[2 * k]);
        if (rc) return rc;
    }
    unsigned char *img = NULL, header[64];
    size_t img_size = 0, nf = flat_size(m), abytes = nf * sizeof(real);
    real *arr[4] = {NULL, NULL, NULL, NULL};
    const char *names[4] = {"m", "v", "vmax", "ema"};
    real *src[4] = {o->m, o->v, o->vmax, o->ema};
    StrBuf tb = {NULL, 0, 0, 0};
    rc = model_image(m, params, NULL, sizeof(real) == 8, path, &img, &img_size, err);
    int na = 0;
    for (int k = 0; !rc && k < 4; k++) {
        if (!src[k]) continue;
        arr[k] = malloc(abytes ? abytes : 1);
        if (!arr[k]) rc = fail(err, OARD_ERR_NOMEM, "%s: out of memory", path);
        else { flat_copy(m, src[k], arr[k], 1); na++; }
    }
    if (!rc) {
        const oard_optim_opts *op = &o->o;
        sb_printf(&tb, "precision %s\n", OARD_REAL_NAME);
        sb_printf(&tb, "optim.lr %.17g\noptim.beta1 %.17g\noptim.beta2 %.17g\noptim.eps %.17g\n", op->lr, op->beta1, op->beta2, op->eps);
        sb_printf(&tb, "optim.weight_decay %.17g\noptim.amsgrad %d\noptim.clip %d\noptim.ema_decay %.17g\n", op->weight_decay,
                  op->amsgrad, op->clip, op->ema_decay);
        sb_printf(&tb, "optim.step %lld\noptim.queue ", o->step);
        for (int i = 0; i < o->qn; i++) sb_printf(&tb, "%s%.17g", i ? "," : "", o->queue[i]);
        sb_printf(&tb, "\noptim.tensors %d\noptim.tensor_steps ", o->n_tensors);
        for (int k = 0; k < o->n_tensors; k++) sb_printf(&tb, "%s%lld", k ? "," : "", o->tstep[k]);
        sb_printf(&tb, "\n");
        uint64_t aoff = 0;
        for (int k = 0; k < 4; k++)
            if (arr[k]) { sb_printf(&tb, "array %s %llu %llu\n", names[k], (unsigned long long)aoff, (unsigned long long)abytes); aoff = round64(aoff + abytes); }
        for (int k = 0; meta && meta[2 * k]; k++) sb_printf(&tb, "%s %s\n", meta[2 * k], meta[2 * k + 1]);
        if (tb.oom) rc = fail(err, OARD_ERR_NOMEM, "%s: out of memory", path);
    }
    if (!rc) {
        static const unsigned char zeros[64] = {0};
        uint64_t model_off = round64(64 + tb.n), arrays_off = round64(model_off + img_size), pos = arrays_off;
        for (int k = 0; k < 4; k++)
            if (arr[k]) pos = round64(pos) + abytes;
        memset(header, 0, sizeof(header));
        memcpy(header, CKPT_MAGIC, 8);
        wr_u32(header + 8, CKPT_VERSION);
        wr_u32(header + 12, (uint32_t)sizeof(real));
        wr_u64(header + 16, tb.n);
        wr_u64(header + 24, model_off);
        wr_u64(header + 32, img_size);
        wr_u64(header + 40, arrays_off);
        wr_u64(header + 48, pos);
        wr_u32(header + 60, (uint32_t)na);
        Piece pc[16];
        int np = 0;
        pc[np++] = (Piece){header, 64};
        pc[np++] = (Piece){tb.s, tb.n};
        pc[np++] = (Piece){zeros, (size_t)(model_off - 64 - tb.n)};
        pc[np++] = (Piece){img, img_size};
        pc[np++] = (Piece){zeros, (size_t)(arrays_off - model_off - img_size)};
        uint64_t at = arrays_off;
        for (int k = 0; k < 4; k++) {
            if (!arr[k]) continue;
            pc[np++] = (Piece){zeros, (size_t)(round64(at) - at)};
            pc[np++] = (Piece){arr[k], abytes};
            at = round64(at) + abytes;
        }
        uint32_t c = oard_crc32(0, header, 56);
        c = oard_crc32(c, header + 60, 4);
        for (int i = 1; i < np; i++) c = oard_crc32(c, pc[i].p, pc[i].n);
        wr_u32(header + 56, c);
        rc = write_atomic(path, pc, np, err);
    }
    free(img); free(tb.s);
    for (int k = 0; k < 4; k++) free(arr[k]);
    return rc;
}

/* value of key in the parsed text lines, or NULL */
static const char *ck_get(char **keys, char **vals, int n, const char *key) {
    for (int i = 0; i < n; i++)
        if (!strcmp(keys[i], key)) return vals[i];
    return NULL;
}

static int ck_double(const char *path, char **keys, char **vals, int n, const char *key, double *out, char *err) {
    const char *v = ck_get(keys, vals, n, key);
    char *end = NULL;
    if (v) *out = strtod(v, &end);
    if (!v || end == v || *end || !isfinite(*out))
        return fail(err, OARD_ERR_FORMAT, "%s: checkpoint entry '%s' is missing or malformed", path, key);
    return OARD_OK;
}

/* a comma-separated list of n numbers (exactly n) */
static int ck_list(const char *path, char **keys, char **vals, int nk, const char *key, int n, double *out, char *err) {
    const char *v = ck_get(keys, vals, nk, key);
    const char *p = v;
    for (int i = 0; v && i < n; i++) {
        char *end;
        out[i] = strtod(p, &end);
        if (end == p || !isfinite(out[i]) || (i < n - 1 ? *end != ',' : *end != 0)) v = NULL;
        else p = end + 1;
    }
    if (!v || (n == 0 && *v))
        return fail(err, OARD_ERR_FORMAT, "%s: checkpoint entry '%s' is missing or not a list of %d numbers", path, key, n);
    return OARD_OK;
}

/* A checkpoint's text part: "key value" lines, split in place */
typedef struct {
    char *text;
    char **keys, **vals;
    int nk;
} CkptText;

/* The 64-byte header (layout: oard_checkpoint_save): magic, version, the build's real size,
 * the file size, offsets that stay inside the file, and the CRC of everything but itself. */
static int ckpt_check_header(const char *path, const unsigned char *b, size_t size, uint64_t *text_size, uint64_t *model_off,
                             uint64_t *model_size, uint64_t *arrays_off, char *err) {
    if (size < 64 || memcmp(b, CKPT_MAGIC, 8) != 0) return fail(err, OARD_ERR_FORMAT, "%s: not an oa_reactdiff checkpoint (bad magic)", path);
    if (rd_u32(b + 8) != CKPT_VERSION)
        return fail(err, OARD_ERR_FORMAT, "%s: checkpoint format version %u, this build reads version %u", path, rd_u32(b + 8),
                    CKPT_VERSION);
    if (rd_u32(b + 12) != sizeof(real))
        return fail(err, OARD_ERR_FORMAT, "%s: written by the %s build, this is the %s build (oa_reactdiff is float32, oa_reactdiff64 float64)",
                    path, rd_u32(b + 12) == 8 ? "float64" : "float32", OARD_REAL_NAME);
    if (rd_u64(b + 48) != size)
        return fail(err, OARD_ERR_FORMAT, "%s: truncated or padded: header says %llu bytes, file has %zu", path,
                    (unsigned long long)rd_u64(b + 48), size);
    *text_size = rd_u64(b + 16);
    *model_off = rd_u64(b + 24);
    *model_size = rd_u64(b + 32);
    *arrays_off = rd_u64(b + 40);
    if (*text_size > size || *model_off < 64 + *text_size || *model_off % 64 || *arrays_off % 64 || *arrays_off > size ||
        *model_off > *arrays_off || *model_size > *arrays_off - *model_off) /* differences: no wrap past 2^64 */
        return fail(err, OARD_ERR_FORMAT, "%s: inconsistent checkpoint header", path);
    uint32_t c = oard_crc32(0, b, 56);
    c = oard_crc32(c, b + 60, size - 60);
    if (c != rd_u32(b + 56))
        return fail(err, OARD_ERR_FORMAT, "%s: checksum mismatch (file corrupted): stored %08x, computed %08x", path, rd_u32(b + 56), c);
    return OARD_OK;
}

/* The text part (text_size bytes after the header) as key/value pairs */
static int ckpt_read_text(const char *path, const unsigned char *b, uint64_t text_size, CkptText *t, char *err) {
    t->text = malloc((size_t)text_size + 1);
    t->keys = xcalloc((size_t)text_size / 2 + 1, sizeof(char *));
    t->vals = xcalloc((size_t)text_size / 2 + 1, sizeof(char *));
    if (!t->text || !t->keys || !t->vals) return fail(err, OARD_ERR_NOMEM, "%s: out of memory", path);
    memcpy(t->text, b + 64, (size_t)text_size);
    t->text[text_size] = 0;
    for (char *line = t->text; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        char *sp = strchr(line, ' ');
        if (!sp) return fail(err, OARD_ERR_FORMAT, "%s: malformed checkpoint line '%.60s'", path, line);
        *sp = 0;
        t->keys[t->nk] = line;
        t->vals[t->nk++] = sp + 1;
        line = nl ? nl + 1 : NULL;
    }
    return OARD_OK;
}

/* The optimizer of model m from the text: its options, step count, clip queue and each
 * tensor's step count (the moment arrays come next, ckpt_read_arrays). tmp: scratch of
 * n_tensors + CLIP_QUEUE_LEN + 1 doubles, allocated here. */
static int ckpt_read_optim(const char *path, const CkptText *t, oard_model *m, oard_optim **op, double **tmp, char *err) {
    char **keys = t->keys, **vals = t->vals;
    const int nk = t->nk;
    oard_optim_opts opts;
    double x = 0;
    memset(&opts, 0, sizeof(opts));
    int rc = ck_double(path, keys, vals, nk, "optim.lr", &opts.lr, err);
    if (!rc) rc = ck_double(path, keys, vals, nk, "optim.beta1", &opts.beta1, err);
    if (!rc) rc = ck_double(path, keys, vals, nk, "optim.beta2", &opts.beta2, err);
    if (!rc) rc = ck_double(path, keys, vals, nk, "optim.eps", &opts.eps, err);
    if (!rc) rc = ck_double(path, keys, vals, nk, "optim.weight_decay", &opts.weight_decay, err);
    if (!rc) rc = ck_double(path, keys, vals, nk, "optim.ema_decay", &opts.ema_decay, err);
    if (!rc) rc = ck_double(path, keys, vals, nk, "optim.amsgrad", &x, err);
    if (!rc) {
        opts.amsgrad = x != 0;
        rc = ck_double(path, keys, vals, nk, "optim.clip", &x, err);
    }
    if (!rc) opts.clip = x != 0;
    if (!rc) rc = oard_optim_new(m, 0, m->params, &opts, op, err);
    if (rc) return rc;
    oard_optim *o = *op;
    rc = ck_double(path, keys, vals, nk, "optim.step", &x, err);
    if (!rc && !(x >= 0 && x <= 1e15 && x == floor(x))) rc = fail(err, OARD_ERR_FORMAT, "%s: bad optimizer step count", path);
    if (!rc) o->step = (long long)x;
    if (!rc) rc = ck_double(path, keys, vals, nk, "optim.tensors", &x, err);
    if (!rc && x != o->n_tensors)
        rc = fail(err, OARD_ERR_FORMAT, "%s: optimizer state for %g tensors, the model has %d trainable ones", path, x, o->n_tensors);
    if (rc) return rc;
    const char *q = ck_get(keys, vals, nk, "optim.queue");
    int qn = 1;
    for (const char *c = q; c && *c; c++) qn += *c == ',';
    double *d = *tmp = xcalloc((size_t)o->n_tensors + CLIP_QUEUE_LEN + 1, sizeof(double));
    if (!d) return fail(err, OARD_ERR_NOMEM, "%s: out of memory", path);
    if (!q || qn > CLIP_QUEUE_LEN) return fail(err, OARD_ERR_FORMAT, "%s: checkpoint entry 'optim.queue' is missing or malformed", path);
    rc = ck_list(path, keys, vals, nk, "optim.queue", qn, d, err);
    if (rc) return rc;
    memcpy(o->queue, d, (size_t)qn * sizeof(double));
    o->qn = qn;
    rc = ck_list(path, keys, vals, nk, "optim.tensor_steps", o->n_tensors, d, err);
    for (int k = 0; !rc && k < o->n_tensors; k++) {
        if (!(d[k] >= 0 && d[k] <= (double)o->step && d[k] == floor(d[k])))
            rc = fail(err, OARD_ERR_FORMAT, "%s: bad step count of tensor %d", path, k);
        else o->tstep[k] = (long long)d[k];
    }
    return rc;
}

/* The optimizer's arrays (m, v, vmax when amsgrad, ema when EMA) from the "array NAME OFFSET
 * BYTES" lines: each present once, inside the file, zero outside the trainable tensors. */
static int ckpt_read_arrays(const char *path, const unsigned char *b, size_t size, uint64_t arrays_off, const CkptText *t,
                            const oard_model *m, oard_optim *o, char *err) {
    real *dst[4] = {o->m, o->v, o->vmax, o->ema};
    const char *names[4] = {"m", "v", "vmax", "ema"};
    int seen[4] = {0, 0, 0, 0}, n_arrays = 0, rc = OARD_OK;
    size_t nf = flat_size(m);
    for (int i = 0; !rc && i < t->nk; i++) {
        if (strcmp(t->keys[i], "array")) continue;
        char name[16];
        unsigned long long aoff, anb;
        int k = 0, pos = 0;
        if (sscanf(t->vals[i], "%15s %llu %llu%n", name, &aoff, &anb, &pos) != 3 || t->vals[i][pos]) k = -1;
        while (k >= 0 && k < 4 && strcmp(name, names[k])) k++;
        if (k < 0 || k == 4 || seen[k] || !dst[k] || anb != nf * sizeof(real) || aoff % 64 || aoff > size - arrays_off ||
            anb > size - arrays_off - aoff)
            return fail(err, OARD_ERR_FORMAT, "%s: bad checkpoint array entry '%.60s'", path, t->vals[i]);
        real *flat = malloc(anb ? (size_t)anb : 1);
        if (!flat) rc = fail(err, OARD_ERR_NOMEM, "%s: out of memory", path);
        else {
            memcpy(flat, b + arrays_off + aoff, (size_t)anb);
            flat_copy(m, dst[k], flat, 0);
            free(flat);
        }
        seen[k] = 1;
        n_arrays++;
    }
    for (int k = 0; !rc && k < 4; k++)
        if (dst[k] && !seen[k]) rc = fail(err, OARD_ERR_FORMAT, "%s: the optimizer's '%s' array is missing", path, names[k]);
    if (!rc && (uint32_t)n_arrays != rd_u32(b + 60)) rc = fail(err, OARD_ERR_FORMAT, "%s: header and text disagree on the arrays", path);
    for (int k = 0; !rc && k < 4; k++) /* nothing but the trainable values may be nonzero */
        for (int ti_k = 0; dst[k] && ti_k < m->file.n_t; ti_k++) {
            oard_tensor ti;
            oard_tensor_info(m, ti_k, &ti);
            if (ti.trainable || k == 3) continue;
            size_t n = (size_t)(m->file.t[ti_k].nbytes / (m->file.t[ti_k].is_f64 ? 8 : 4));
            for (size_t j = 0; j < n && !rc; j++)
                if (dst[k][ti.offset + j] != 0) rc = fail(err, OARD_ERR_FORMAT, "%s: optimizer state for buffer %s", path, ti.name);
        }
    return rc;
}

/* The caller's lines (every key that is not the optimizer's or an array), in one allocation:
 * key, value, key, value, ..., NULL. */
static int ckpt_user_lines(const char *path, const CkptText *t, char ***metap, char *err) {
    size_t bytes = 0;
    int nu = 0;
    for (int i = 0; i < t->nk; i++)
        if (!reserved_ckpt_key(t->keys[i])) {
            nu++;
            bytes += strlen(t->keys[i]) + strlen(t->vals[i]) + 2;
        }
    char **list = malloc((size_t)(2 * nu + 1) * sizeof(char *) + bytes);
    if (!list) return fail(err, OARD_ERR_NOMEM, "%s: out of memory", path);
    char *s = (char *)(list + 2 * nu + 1);
    int j = 0;
    for (int i = 0; i < t->nk; i++) {
        if (reserved_ckpt_key(t->keys[i])) continue;
        list[j++] = strcpy(s, t->keys[i]);
        s += strlen(t->keys[i]) + 1;
        list[j++] = strcpy(s, t->vals[i]);
        s += strlen(t->vals[i]) + 1;
    }
    list[j] = NULL;
    *metap = list;
    return OARD_OK;
}

int oard_checkpoint_load(const char *path, oard_model **mp, oard_optim **op, char ***metap, char *err) {
    *mp = NULL;
    *op = NULL;
    *metap = NULL;
    unsigned char *b;
    size_t size;
    int rc = read_binary_file(path, "checkpoint", CKPT_MAGIC, &b, &size, err);
    if (rc) return rc;
    CkptText text = {NULL, NULL, NULL, 0};
    oard_model *m = NULL;
    oard_optim *o = NULL;
    double *tmp = NULL;
    uint64_t text_size = 0, model_off = 0, model_size = 0, arrays_off = 0;
    rc = ckpt_check_header(path, b, size, &text_size, &model_off, &model_size, &arrays_off, err);
    if (!rc) rc = ckpt_read_text(path, b, text_size, &text, err);
    if (!rc) { /* the model: a weights image */
        unsigned char *img = malloc((size_t)model_size ? (size_t)model_size : 1);
        if (!img) rc = fail(err, OARD_ERR_NOMEM, "%s: out of memory", path);
        else {
            memcpy(img, b + model_off, (size_t)model_size);
            rc = model_load_image(path, img, (size_t)model_size, 0, &m, err);
        }
    }
    if (!rc) rc = ckpt_read_optim(path, &text, m, &o, &tmp, err);
    if (!rc) rc = ckpt_read_arrays(path, b, size, arrays_off, &text, m, o, err);
    if (!rc) rc = ckpt_user_lines(path, &text, metap, err);
    free(b);
    free(text.text);
    free(text.keys);
    free(text.vals);
    free(tmp);
    if (rc) {
        oard_optim_free(o);
        oard_model_free(m);
        return rc;
    }
    *mp = m;
    *op = o;
    return OARD_OK;
}

/* ------------------------------------------------------------------------------------ */
/* Command line                                                                            */
#ifndef OARD_NO_MAIN
#include <signal.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Exit statuses (README, "Failures"): one per kind of problem, so scripts can tell them apart */
enum {
    EXIT_IO = 1,      /* a file cannot be opened, read or written */
    EXIT_USAGE = 2,   /* bad command line */
    EXIT_INPUT = 3,   /* malformed or inconsistent input (xyz, list, composition) */
    EXIT_WEIGHTS = 4, /* weights file unusable (format, checksum, kind) */
    EXIT_MEMORY = 5,  /* system too large / out of memory */
    EXIT_NUMERIC = 6, /* NaN/Inf during a computation */
    EXIT_BATCH = 7    /* a batch finished, some reactions failed */
};

static int exit_status(int rc) {
    switch (rc) {
    case OARD_ERR_IO: return EXIT_IO;
    case OARD_ERR_FORMAT: return EXIT_INPUT;
    case OARD_ERR_MODEL: return EXIT_WEIGHTS;
    case OARD_ERR_NOMEM: return EXIT_MEMORY;
    case OARD_ERR_NUMERIC: return EXIT_NUMERIC;
    default: return EXIT_USAGE;
    }
}

/* ---- elements ---- */
static const char *const ELEMENT_SYMBOLS[] = {
    "",   "H",  "He", "Li", "Be", "B",  "C",  "N",  "O",  "F",  "Ne", "Na", "Mg", "Al", "Si", "P",  "S",
    "Cl", "Ar", "K",  "Ca", "Sc", "Ti", "V",  "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As",
    "Se", "Br", "Kr", "Rb", "Sr", "Y",  "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn",
    "Sb", "Te", "I",  "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho",
    "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W",  "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po",
    "At", "Rn", "Fr", "Ra", "Ac", "Th", "Pa", "U",  "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md",
    "No", "Lr", "Rf", "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og"};
#define MAX_Z 118

/* atomic number of an element symbol (any case) or of a number 1..118; 0 if neither */
static int atomic_number(const char *sym) {
    char *end;
    long z = strtol(sym, &end, 10);
    if (end != sym && !*end) return z >= 1 && z <= MAX_Z ? (int)z : 0;
    for (int i = 1; i <= MAX_Z; i++) {
        const char *a = ELEMENT_SYMBOLS[i], *b = sym;
        while (*a && *b && tolower((unsigned char)*a) == tolower((unsigned char)*b)) { a++; b++; }
        if (!*a && !*b) return i;
    }
    return 0;
}

/* index of atomic number z in the model's element table, or -1 */
static int model_element(const oard_config *c, int z) {
    for (int i = 0; i < c->n_elements; i++)
        if (c->element_z[i] == z) return i;
    return -1;
}

static void element_list(const oard_config *c, char *buf, size_t n) {
    buf[0] = 0;
    for (int i = 0; i < c->n_elements; i++)
        snprintf(buf + strlen(buf), n - strlen(buf), "%s%s", i ? ", " : "", c->element_sym[i]);
}

/* ---- molecules and xyz files ---- */
typedef struct {
    int n;
    int *z;      /* atomic numbers */
    double *xyz; /* (n, 3), Angstrom */
    const char *path;
} Molecule;

static void mol_free(Molecule *m) {
    free(m->z);
    free(m->xyz);
    memset(m, 0, sizeof(*m));
}

/* XYZ: atom count, comment line, then "Symbol x y z" per atom (extra columns, as in
 * extended XYZ, are ignored); a multi-frame file repeats that. Every problem is one line
 * naming the file and the line. read_xyz_frame reads one frame from f; at the end of the
 * file (only blank lines left) it returns OARD_OK with mol->n = 0. */
enum { LINE_EOF, LINE_OK, LINE_LONG, LINE_NUL };

/* One line into buf (size bytes; NUL-terminated, its newline kept, as fgets): LINE_OK, or
 * LINE_EOF at the end of the file; LINE_LONG when it does not fit (the rest of the line
 * is read and dropped, so the next call starts on the next line), LINE_NUL when it holds
 * a NUL byte (a binary file, which fgets would cut silently). */
static int read_line(FILE *f, char *buf, int size) {
    int c = getc_unlocked(f), n = 0, st = LINE_OK;
    if (c == EOF) { buf[0] = 0; return LINE_EOF; }
    for (; c != EOF; c = getc_unlocked(f)) {
        if (c == 0 && st == LINE_OK) st = LINE_NUL;
        if (n < size - 1) buf[n++] = (char)c;
        else if (st == LINE_OK) st = LINE_LONG;
        if (c == '\n') break;
    }
    buf[n] = 0;
    return st;
}

static int read_xyz_frame(FILE *f, const char *path, int *lineno, Molecule *mol, char *err) {
    memset(mol, 0, sizeof(*mol));
    mol->path = path;
    char line[4096], *end;
    int rc = OARD_OK, st;
    for (;;) { /* the count line; blank lines before it are allowed only at the end */
        if ((st = read_line(f, line, sizeof(line))) == LINE_EOF) {
            if (ferror(f)) return fail(err, OARD_ERR_IO, "%s: cannot read: %s", path, strerror(errno));
            return OARD_OK; /* end of file */
        }
        ++*lineno;
        if (st == LINE_NUL) return fail(err, OARD_ERR_FORMAT, "%s:%d: NUL byte (not a text file?)", path, *lineno);
        char *q = line;
        while (*q && isspace((unsigned char)*q)) q++;
        if (*q) break;
        int c;
        while ((c = fgetc(f)) != EOF && isspace(c)) /* only blank lines may follow */
            if (c == '\n') ++*lineno;
        if (c == EOF) return OARD_OK; /* trailing blank lines */
        ungetc(c, f);
        return fail(err, OARD_ERR_FORMAT, "%s:%d: blank line where an atom count was expected", path, *lineno);
    }
    errno = 0;
    long n = strtol(line, &end, 10);
    while (*end && isspace((unsigned char)*end)) end++;
    if (end == line || *end || errno || n <= 0 || n > 100000) {
        line[strcspn(line, "\r\n")] = 0;
        if (*lineno > 1) /* after a frame: most likely the count was too small */
            return fail(err, OARD_ERR_FORMAT, "%s:%d: more atoms than the atom count of the frame before (or a malformed next frame: '%.40s')",
                        path, *lineno, line);
        return fail(err, OARD_ERR_FORMAT, "%s:%d: expected the atom count (1 to 100000), got '%.40s'", path, *lineno, line);
    }
    mol->n = (int)n;
    mol->z = xcalloc((size_t)n, sizeof(int));
    mol->xyz = xcalloc((size_t)n * 3, sizeof(double));
    if (!mol->z || !mol->xyz) rc = fail(err, OARD_ERR_NOMEM, "%s: out of memory", path);
    /* the comment line: any length (extended XYZ puts its metadata there) */
    if (!rc && (st = read_line(f, line, sizeof(line))) == LINE_EOF)
        rc = fail(err, OARD_ERR_FORMAT, "%s: missing comment line after line %d", path, *lineno);
    ++*lineno;
    if (!rc && st == LINE_NUL) rc = fail(err, OARD_ERR_FORMAT, "%s:%d: NUL byte (not a text file?)", path, *lineno);
    for (int a = 0; !rc && a < n; a++) {
        ++*lineno;
        if ((st = read_line(f, line, sizeof(line))) == LINE_EOF) {
            rc = ferror(f) ? fail(err, OARD_ERR_IO, "%s: cannot read: %s", path, strerror(errno))
                           : fail(err, OARD_ERR_FORMAT, "%s: atom count says %ld atoms, file ends after %d", path, n, a);
            break;
        }
        if (st == LINE_NUL) {
            rc = fail(err, OARD_ERR_FORMAT, "%s:%d: NUL byte (not a text file?)", path, *lineno);
            break;
        }
        if (st == LINE_LONG) {
            rc = fail(err, OARD_ERR_FORMAT, "%s:%d: line longer than %d characters", path, *lineno, (int)sizeof(line) - 2);
            break;
        }
        char sym[16];
        int off = 0;
        if (sscanf(line, "%15s%n", sym, &off) != 1) {
            rc = fail(err, OARD_ERR_FORMAT, "%s:%d: expected 'Element x y z', got a blank line (atom count %ld too large?)", path, *lineno, n);
            break;
        }
        mol->z[a] = atomic_number(sym);
        if (!mol->z[a]) {
            rc = fail(err, OARD_ERR_FORMAT, "%s:%d: unknown element '%s'", path, *lineno, sym);
            break;
        }
        char *p = line + off;
        for (int k = 0; k < 3; k++) {
            double v = strtod(p, &end);
            if (end == p || !isfinite(v) || (*end && !isspace((unsigned char)*end)) || fabs(v) > 1e6) {
                rc = fail(err, OARD_ERR_FORMAT, "%s:%d: coordinate %c is %s", path, *lineno, "xyz"[k],
                          end == p              ? "missing or not a number"
                          : !isfinite(v)        ? "not finite (NaN or Inf)"
                          : fabs(v) > 1e6       ? "beyond 1e6 Angstrom"
                                                : "not a number");
                break;
            }
            mol->xyz[3 * a + k] = v;
            p = end;
        }
    }
    if (rc) mol_free(mol);
    return rc;
}

/* Every frame of an open stream (path names it in messages); *frames is an array of
 * *count molecules. */
static int read_xyz_stream(FILE *f, const char *path, Molecule **frames, int *count, char *err) {
    *frames = NULL; *count = 0;
    int rc = OARD_OK, lineno = 0, cap = 0;
    for (;;) {
        Molecule m;
        rc = read_xyz_frame(f, path, &lineno, &m, err);
        if (rc || m.n == 0) break;
        if (*count == cap) {
            cap = cap ? 2 * cap : 4;
            Molecule *nf = realloc(*frames, (size_t)cap * sizeof(Molecule));
            if (!nf) {
                mol_free(&m);
                rc = fail(err, OARD_ERR_NOMEM, "%s: out of memory", path);
                break;
            }
            *frames = nf;
        }
        (*frames)[(*count)++] = m;
    }
    if (!rc && *count == 0) rc = fail(err, OARD_ERR_FORMAT, "%s: empty file (no atoms)", path);
    if (rc) {
        for (int i = 0; i < *count; i++) mol_free(&(*frames)[i]);
        free(*frames);
        *frames = NULL; *count = 0;
    }
    return rc;
}

static int read_xyz_frames(const char *path, Molecule **frames, int *count, char *err) {
    *frames = NULL; *count = 0;
    FILE *f = fopen(path, "r");
    if (!f) return fail(err, OARD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    int rc = read_xyz_stream(f, path, frames, count, err);
    fclose(f);
    return rc;
}

/* A file of exactly one frame. */
static int read_xyz(const char *path, Molecule *mol, char *err) {
    Molecule *fr;
    int n, rc = read_xyz_frames(path, &fr, &n, err);
    memset(mol, 0, sizeof(*mol));
    if (rc) return rc;
    if (n == 1) *mol = fr[0];
    else rc = fail(err, OARD_ERR_FORMAT, "%s: %d frames (more atoms than the count on line 1?); one structure expected here", path, n);
    for (int i = 1; i < n; i++) mol_free(&fr[i]);
    if (rc && n > 0) mol_free(&fr[0]);
    free(fr);
    return rc;
}

/* Same composition (atom order free). */
static int same_composition(const Molecule *A, const Molecule *B, char *err) {
    int ca[MAX_Z + 1] = {0}, cb[MAX_Z + 1] = {0};
    for (int i = 0; i < A->n; i++) ca[A->z[i]]++;
    for (int i = 0; i < B->n; i++) cb[B->z[i]]++;
    for (int z = 1; z <= MAX_Z; z++)
        if (ca[z] != cb[z])
            return fail(err, OARD_ERR_FORMAT, "%s vs %s: composition mismatch (%s: %d vs %d)", A->path, B->path,
                        ELEMENT_SYMBOLS[z], ca[z], cb[z]);
    return OARD_OK;
}

/* Every atom must be in the model's element table. */
static int check_model_elements(const oard_config *c, const Molecule *m, char *err) {
    for (int i = 0; i < m->n; i++)
        if (model_element(c, m->z[i]) < 0) {
            char list[128];
            element_list(c, list, sizeof(list));
            return fail(err, OARD_ERR_FORMAT, "%s: atom %d is %s, which the model does not know (it knows %s)", m->path,
                        i + 1, ELEMENT_SYMBOLS[m->z[i]], list);
        }
    return OARD_OK;
}

/* Canonical atom order of one object: by element, then by distance from the object's
 * centroid, then by coordinates (x, then y, then z).
 * Why: the model needs no atom mapping between R and P, but upstream's output depends on
 * the order of an object's atoms beyond summation order when the object is not within
 * the cutoff as a whole: its centring groups are labelled by a first-visit scan over the
 * nodes (centre_by_nodemask). Putting every object in an order defined by its geometry
 * alone makes the results, noise included, independent of the input's atom order, and of
 * its orientation unless two atoms of an element are equally far from the centroid. The
 * centroid is summed in coordinate order, so it is bit-identical for any input order. */
typedef struct {
    int z, idx;
    double d2, x[3];
} AtomKey;

static int cmp_coords(const void *pa, const void *pb) {
    const double *a = ((const AtomKey *)pa)->x, *b = ((const AtomKey *)pb)->x;
    for (int k = 0; k < 3; k++)
        if (a[k] != b[k]) return a[k] < b[k] ? -1 : 1;
    return 0;
}

static int cmp_canonical(const void *pa, const void *pb) {
    const AtomKey *a = pa, *b = pb;
    if (a->z != b->z) return a->z < b->z ? -1 : 1;
    if (a->d2 != b->d2) return a->d2 < b->d2 ? -1 : 1;
    int c = cmp_coords(pa, pb);
    return c ? c : (a->idx > b->idx) - (a->idx < b->idx); /* coincident atoms: input order */
}

static int canonical_order(const Molecule *m, int *perm) {
    int n = m->n;
    AtomKey *k = malloc((size_t)n * sizeof(AtomKey));
    if (!k) return OARD_ERR_NOMEM;
    for (int i = 0; i < n; i++) {
        k[i].z = m->z[i]; k[i].idx = i; k[i].d2 = 0;
        memcpy(k[i].x, m->xyz + 3 * i, sizeof(k[i].x));
    }
    qsort(k, (size_t)n, sizeof(*k), cmp_coords); /* the centroid, summed in coordinate order */
    double c[3] = {0, 0, 0};
    for (int i = 0; i < n; i++)
        for (int d = 0; d < 3; d++) c[d] += k[i].x[d];
    for (int d = 0; d < 3; d++) c[d] /= n;
    for (int i = 0; i < n; i++) {
        const double *x = k[i].x;
        k[i].d2 = (x[0] - c[0]) * (x[0] - c[0]) + (x[1] - c[1]) * (x[1] - c[1]) + (x[2] - c[2]) * (x[2] - c[2]);
    }
    qsort(k, (size_t)n, sizeof(*k), cmp_canonical); /* element, distance, coordinates */
    for (int i = 0; i < n; i++) perm[i] = k[i].idx;
    free(k);
    return OARD_OK;
}

/* one object's rows: positions, one-hot, Z, atoms taken in the order perm */
static void fill_rows(const oard_config *c, const Molecule *mol, const int *perm, int centre, real *xh, int nf) {
    double cen[3] = {0, 0, 0};
    if (centre)
        for (int a = 0; a < mol->n; a++)
            for (int k = 0; k < 3; k++) cen[k] += mol->xyz[3 * a + k] / mol->n;
    for (int r = 0; r < mol->n; r++) {
        int a = perm[r], e = model_element(c, mol->z[a]);
        real *row = xh + (size_t)r * nf;
        for (int k = 0; k < 3; k++) row[k] = (real)(mol->xyz[3 * a + k] - cen[k]);
        for (int k = 0; k < c->n_elements; k++) row[3 + k] = (real)(k == e);
        row[3 + c->n_elements] = (real)c->element_z[e];
    }
}

/* ---- output: atomic files, extended XYZ ---- */

/* The temporary file being written, removed if a signal (Ctrl-C, a batch system's
 * SIGTERM at the time limit) ends the program: no partial output survives. */
static char g_tmp_path[4200];

/* While the library writes a file (a checkpoint, model.bin) under a name only it knows,
 * a signal is held and acted on when the write is over (defer_signals). */
static volatile sig_atomic_t g_deferring, g_deferred;

static void on_signal(int sig) {
    if (g_deferring) {
        g_deferred = sig;
        return;
    }
    if (g_tmp_path[0]) unlink(g_tmp_path);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void defer_signals(int on) {
    g_deferring = on;
    if (!on && g_deferred) raise(g_deferred);
}

typedef struct {
    FILE *f;
    char tmp[4200];
    const char *path;
} AtomicFile;

static int atomic_open(AtomicFile *a, const char *path, char *err) {
    a->path = path;
    const char *what = non_regular(path);
    if (what) return fail(err, OARD_ERR_IO, "%s: exists and is %s, not a regular file; not replaced", path, what);
    a->f = tmp_create(path, a->tmp, sizeof(a->tmp));
    if (!a->f) return fail(err, OARD_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    memcpy(g_tmp_path, a->tmp, sizeof(g_tmp_path));
    return OARD_OK;
}

/* ok = 0 abandons the file. Write errors (disk full, ...) are caught here: the partial
 * temporary file is removed and the target is left as it was. */
static int atomic_close(AtomicFile *a, int ok, char *err) {
    int bad = ferror(a->f) || fflush(a->f) != 0;
    int saved = errno;
    if (fclose(a->f) != 0) { bad = 1; saved = errno; }
    int rc = OARD_OK;
    if (!ok || bad) {
        remove(a->tmp);
        if (ok) rc = fail(err, OARD_ERR_IO, "%s: write failed: %s", a->path, strerror(saved));
    } else if (rename(a->tmp, a->path) != 0) {
        saved = errno;
        remove(a->tmp);
        rc = fail(err, OARD_ERR_IO, "%s: cannot rename into place: %s", a->path, strerror(saved));
    }
    g_tmp_path[0] = 0;
    return rc;
}

/* An output written later, checked before any work: the checks of atomic_open, and a
 * temporary file is created beside it and removed (its directory exists and is writable,
 * the names fit the file system). */
static int check_output(const char *path, char *err) {
    AtomicFile af;
    int rc = atomic_open(&af, path, err);
    return rc ? rc : atomic_close(&af, 0, err);
}

/* append key="value" (extended XYZ string, quotes and backslashes escaped) */
static void kv_string(char *buf, size_t n, const char *key, const char *value) {
    size_t len = strlen(buf);
    len += (size_t)snprintf(buf + len, n > len ? n - len : 0, " %s=\"", key);
    for (const char *p = value; *p && len + 3 < n; p++) {
        if (*p == '"' || *p == '\\') buf[len++] = '\\';
        buf[len++] = (*p == '\n' || *p == '\r') ? ' ' : *p;
    }
    if (len + 2 < n) { buf[len++] = '"'; buf[len] = 0; }
}

static void kv_format(char *buf, size_t n, const char *fmt, ...) {
    size_t len = strlen(buf);
    va_list ap;
    va_start(ap, fmt);
    if (len < n) vsnprintf(buf + len, n - len, fmt, ap);
    va_end(ap);
}

/* one frame; atom i is row order[i] of xh (order NULL: identity), shifted by shift */
static void write_frame(FILE *f, int n, const int *z, const real *xh, int nf, const int *order, const double shift[3],
                        const char *comment) {
    fprintf(f, "%d\nProperties=species:S:1:pos:R:3%s\n", n, comment);
    for (int i = 0; i < n; i++) {
        const real *row = xh + (size_t)(order ? order[i] : i) * nf;
        fprintf(f, "%-2s %16.10f %16.10f %16.10f\n", ELEMENT_SYMBOLS[z[i]], (double)row[0] + shift[0],
                (double)row[1] + shift[1], (double)row[2] + shift[2]);
    }
}

/* ---- progress on a terminal ---- */
typedef struct {
    const char *label;
    struct timespec t0;
} Progress;

static double seconds_since(const struct timespec *t0) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + 1e-9 * (double)(t.tv_nsec - t0->tv_nsec);
}

static void progress_report(void *ctx, int done, int total) {
    Progress *p = ctx;
    double el = seconds_since(&p->t0), eta = done > 0 ? el * (total - done) / done : 0;
    fprintf(stderr, "\r  %s step %d/%d  %.0fs elapsed, ETA %.0fs   ", p->label, done, total, el, eta);
    if (done == total) fputc('\n', stderr);
}

/* ---- weights ---- */

/* --weights, else $OA_REACTDIFF_WEIGHTS, else weights.bin beside the executable, else
 * ../share/oa_reactdiff/weights.bin relative to it (make install). */
/* The weights a command uses: --weights, else $ENV, else NAME beside the binary, else
 * ../share/oa_reactdiff/NAME relative to it. ts uses weights.bin ($OA_REACTDIFF_WEIGHTS);
 * sample uses weights_diffusion.bin ($OA_REACTDIFF_DIFFUSION_WEIGHTS) when one is installed,
 * since it needs a diffusion model and the bundled weights.bin may be a bridge model. */
static int locate_weights(const char *env_name, const char *name, char *buf, size_t n, const char **out, char *err) {
    const char *env = getenv(env_name);
    if (env && *env) { *out = env; return OARD_OK; }
    char exe[4096];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (len <= 0) return fail(err, OARD_ERR_ARG, "cannot locate the executable to find %s; use --weights FILE", name);
    exe[len] = 0;
    char *slash = strrchr(exe, '/');
    if (slash) *slash = 0;
    snprintf(buf, n, "%s/%s", exe, name);
    if (access(buf, F_OK) == 0) { *out = buf; return OARD_OK; }
    char alt[4200];
    snprintf(alt, sizeof(alt), "%s/../share/oa_reactdiff/%s", exe, name);
    if (access(alt, F_OK) == 0) { snprintf(buf, n, "%s", alt); *out = buf; return OARD_OK; }
    return fail(err, OARD_ERR_IO, "no weights: neither %s nor %s exists (use --weights FILE or $%s)", buf, alt, env_name);
}

static int find_weights(const char *given, char *buf, size_t n, const char **out, char *err) {
    if (given) { *out = given; return OARD_OK; }
    return locate_weights("OA_REACTDIFF_WEIGHTS", "weights.bin", buf, n, out, err);
}

static int find_diffusion_weights(const char *given, char *buf, size_t n, const char **out, char *err) {
    if (given) { *out = given; return OARD_OK; }
    if (!locate_weights("OA_REACTDIFF_DIFFUSION_WEIGHTS", "weights_diffusion.bin", buf, n, out, err)) return OARD_OK;
    return find_weights(NULL, buf, n, out, err);
}

/* A weights file that cannot be used (malformed, corrupted, wrong kind) is EXIT_WEIGHTS,
 * not EXIT_INPUT: the loader reports it as OARD_ERR_FORMAT or OARD_ERR_MODEL. */
static int load_weights(const char *path, int kind, oard_model **m, char *err) {
    int rc = oard_model_load(path, kind, m, err);
    return rc == OARD_ERR_FORMAT ? OARD_ERR_MODEL : rc;
}

static int load_model(const char *path, int kind, oard_model **m, char *err) {
    int rc = load_weights(path, kind, m, err);
    if (!rc && !oard_model_config(*m)->trained)
        fprintf(stderr, "oa_reactdiff: warning: %s holds UNTRAINED weights (%s); the structures it generates are not "
                        "chemically meaningful\n", path, oard_model_config(*m)->description);
    return rc;
}

/* ---- options ---- */
typedef struct {
    int n, steps, resamplings, jump, threads, same_order, no_reflection, method, shard_i, shard_n, help;
    uint64_t seed;
    const char *weights, *confidence, *out, *outdir, *atoms, *list;
    const char *pos[3];
    int npos;
    /* train */
    const char *data, *init, *init_config, *train_out, *description;
    double lr, weight_decay, ema; /* NAN: not given */
    int batch, val_every, ckpt_every, no_clip, no_swap, resume, seed_set;
    const char *objective;            /* train: diffusion | bridge */
    const char *solver, *ode_method;  /* ts with a bridge model */
    int nfe;
    int given_diffusion, given_bridge; /* ts: options of one method were given */
} Args;

enum { OPT_INT, OPT_SEED, OPT_STR, OPT_FLAG, OPT_SHARD, OPT_METHOD, OPT_REAL };
typedef struct {
    const char *name;
    int type;
    size_t off;
    const char *commands; /* space-separated commands that accept it */
} OptSpec;

#define ARG_OFF(f) offsetof(Args, f)
static const OptSpec OPTIONS[] = {
    {"-n", OPT_INT, ARG_OFF(n), " ts sample "},
    {"--seed", OPT_SEED, ARG_OFF(seed), " ts sample train "},
    {"--steps", OPT_INT, ARG_OFF(steps), " ts sample train "},
    {"--resamplings", OPT_INT, ARG_OFF(resamplings), " ts "},
    {"--jump", OPT_INT, ARG_OFF(jump), " ts "},
    {"--threads", OPT_INT, ARG_OFF(threads), " ts sample score train "},
    {"--weights", OPT_STR, ARG_OFF(weights), " ts sample "},
    {"--confidence", OPT_STR, ARG_OFF(confidence), " ts score "},
    {"-o", OPT_STR, ARG_OFF(out), " ts sample "},
    {"--list", OPT_STR, ARG_OFF(list), " ts "},
    {"--outdir", OPT_STR, ARG_OFF(outdir), " ts "},
    {"--shard", OPT_SHARD, 0, " ts "},
    {"--atoms", OPT_STR, ARG_OFF(atoms), " sample "},
    {"--same-order", OPT_FLAG, ARG_OFF(same_order), " rmsd "},
    {"--no-reflection", OPT_FLAG, ARG_OFF(no_reflection), " rmsd "},
    {"--method", OPT_METHOD, 0, " rmsd "},
    {"--data", OPT_STR, ARG_OFF(data), " train "},
    {"--init", OPT_STR, ARG_OFF(init), " train "},
    {"--init-config", OPT_STR, ARG_OFF(init_config), " train "},
    {"--out", OPT_STR, ARG_OFF(train_out), " train "},
    {"--description", OPT_STR, ARG_OFF(description), " train "},
    {"--batch", OPT_INT, ARG_OFF(batch), " train "},
    {"--lr", OPT_REAL, ARG_OFF(lr), " train "},
    {"--weight-decay", OPT_REAL, ARG_OFF(weight_decay), " train "},
    {"--ema", OPT_REAL, ARG_OFF(ema), " train "},
    {"--val-every", OPT_INT, ARG_OFF(val_every), " train "},
    {"--checkpoint-every", OPT_INT, ARG_OFF(ckpt_every), " train "},
    {"--no-clip", OPT_FLAG, ARG_OFF(no_clip), " train "},
    {"--no-swap", OPT_FLAG, ARG_OFF(no_swap), " train "},
    {"--objective", OPT_STR, ARG_OFF(objective), " train "},
    {"--solver", OPT_STR, ARG_OFF(solver), " ts "},
    {"--ode-method", OPT_STR, ARG_OFF(ode_method), " ts "},
    {"--nfe", OPT_INT, ARG_OFF(nfe), " ts "},
    {"--resume", OPT_FLAG, ARG_OFF(resume), " train "},
    {"--help", OPT_FLAG, ARG_OFF(help), " ts sample rmsd score info train "},
    {"-h", OPT_FLAG, ARG_OFF(help), " ts sample rmsd score info train "},
};

static int parse_count(const char *opt, const char *v, unsigned long long lo, unsigned long long hi,
                       unsigned long long *x, char *err) {
    char *end;
    errno = 0;
    *x = strtoull(v, &end, 10);
    if (end == v || *end || errno || *v == '-' || *v == '+' || isspace((unsigned char)*v) || *x < lo || *x > hi)
        return fail(err, OARD_ERR_ARG, "option %s: '%s' is not an integer from %llu to %llu", opt, v, lo, hi);
    return OARD_OK;
}

static int parse_args(const char *cmd, int argc, char **argv, Args *a, char *err) {
    char key[64];
    snprintf(key, sizeof(key), " %s ", cmd);
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i];
        const OptSpec *s = NULL;
        for (size_t k = 0; k < sizeof(OPTIONS) / sizeof(OPTIONS[0]); k++)
            if (!strcmp(o, OPTIONS[k].name)) s = &OPTIONS[k];
        if (!s) {
            if (o[0] == '-' && o[1]) return fail(err, OARD_ERR_ARG, "%s: unknown option '%s' (oa_reactdiff %s --help)", cmd, o, cmd);
            if (a->npos >= 3) return fail(err, OARD_ERR_ARG, "%s: unexpected argument '%s'", cmd, o);
            a->pos[a->npos++] = o;
            continue;
        }
        if (!strstr(s->commands, key)) return fail(err, OARD_ERR_ARG, "%s: option %s does not apply to this command", cmd, o);
        if (!strcmp(o, "--resamplings") || !strcmp(o, "--jump") || !strcmp(o, "--steps")) a->given_diffusion = 1;
        if (!strcmp(o, "--solver") || !strcmp(o, "--nfe") || !strcmp(o, "--ode-method")) a->given_bridge = 1;
        char *base = (char *)a;
        if (s->type == OPT_FLAG) {
            *(int *)(base + s->off) = 1;
            continue;
        }
        if (i + 1 >= argc) return fail(err, OARD_ERR_ARG, "%s: option %s needs a value", cmd, o);
        const char *v = argv[++i];
        unsigned long long x;
        if (s->type == OPT_INT) {
            if (parse_count(o, v, 1, 1000000, &x, err)) return OARD_ERR_ARG;
            *(int *)(base + s->off) = (int)x;
        } else if (s->type == OPT_SEED) {
            if (parse_count(o, v, 0, UINT64_MAX, &x, err)) return OARD_ERR_ARG;
            a->seed = x; a->seed_set = 1;
        } else if (s->type == OPT_REAL) {
            char *end;
            double d = strtod(v, &end);
            if (end == v || *end || !isfinite(d) || d < 0)
                return fail(err, OARD_ERR_ARG, "option %s: '%s' is not a non-negative number", o, v);
            *(double *)(base + s->off) = d;
        } else if (s->type == OPT_STR) {
            *(const char **)(base + s->off) = v;
        } else if (s->type == OPT_METHOD) {
            if (!strcmp(v, "auto")) a->method = 0;
            else if (!strcmp(v, "exhaustive")) a->method = OARD_RMSD_BRUTE;
            else if (!strcmp(v, "hungarian")) a->method = OARD_RMSD_HUNGARIAN;
            else return fail(err, OARD_ERR_ARG, "--method: '%s' is not auto, exhaustive or hungarian", v);
        } else { /* --shard I/N, 0 <= I < N */
            unsigned long long i0 = 0, n0 = 0;
            const char *slash = strchr(v, '/');
            char ibuf[32];
            int ok = slash && (size_t)(slash - v) < sizeof(ibuf);
            if (ok) { memcpy(ibuf, v, (size_t)(slash - v)); ibuf[slash - v] = 0; }
            /* each number on its own, checked for range before any conversion (no wrap) */
            ok = ok && !parse_count(o, ibuf, 0, 999999, &i0, NULL) && !parse_count(o, slash + 1, 1, 1000000, &n0, NULL);
            if (!ok || i0 >= n0)
                return fail(err, OARD_ERR_ARG, "--shard: '%s' is not I/N with 0 <= I < N <= 1000000", v);
            a->shard_i = (int)i0; a->shard_n = (int)n0;
        }
    }
    return OARD_OK;
}

/* The recommender's score of one reaction. Each object is centred and put in canonical
 * order, so the score does not depend on the atom order or placement of the inputs. */
static int score_reaction(const oard_model *m, const Molecule *const M[3], int threads, real *score, char *err) {
    const oard_config *c = oard_model_config(m);
    int n = M[0]->n, nf = c->node_nfs[0], rc = OARD_OK;
    real *xh[3] = {NULL, NULL, NULL};
    int *perm = xcalloc((size_t)n, sizeof(int));
    if (!perm) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
    for (int f = 0; !rc && f < 3; f++) {
        xh[f] = xcalloc((size_t)n * nf, sizeof(real));
        if (!xh[f]) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
        else if (canonical_order(M[f], perm)) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
        else fill_rows(c, M[f], perm, 1, xh[f], nf);
    }
    if (!rc) {
        oard_batch batch = {1, &n, threads};
        rc = oard_confidence(m, &batch, (const real *const *)xh, NULL, score, err);
    }
    for (int f = 0; f < 3; f++) free(xh[f]);
    free(perm);
    return rc;
}

/* ---- ts: TS candidates by inpainting ---- */
typedef struct {
    oard_model *model, *conf;
    const char *wpath, *cpath;
    const Args *a;
} TsSetup;

typedef struct {
    const Molecule *R;
    const char *product; /* path */
    int *inv;       /* inv[i]: canonical row of the reactant's atom i */
    real *ts;       /* N x n x nf, centred */
    real *score;    /* N, or NULL */
    int *order;     /* output order of the samples */
    const char *solver, *ode_method; /* bridge settings, for the comment line */
    int nfe;
} TsResult;

static int cmp_score_desc(const real *s, int a, int b) { return s[a] < s[b] || (s[a] == s[b] && a > b); }

static int write_ts_file(const TsSetup *setup, const TsResult *res, const char *path, const char *name, uint64_t seed,
                         char *err) {
    const oard_config *c = oard_model_config(setup->model);
    const Args *a = setup->a;
    int N = a->n, n = res->R->n, nf = c->node_nfs[0];
    double shift[3] = {0, 0, 0}; /* the model works centred; put the TS at the reactant's centre */
    for (int i = 0; i < n; i++)
        for (int k = 0; k < 3; k++) shift[k] += res->R->xyz[3 * i + k] / n;
    AtomicFile af;
    int rc = atomic_open(&af, path, err);
    for (int r = 0; !rc && r < N; r++) {
        int b = res->order[r];
        char cm[8192] = "";
        if (name) kv_string(cm, sizeof(cm), "name", name);
        if (c->objective == OARD_OBJECTIVE_BRIDGE) /* deterministic: no seed */
            kv_format(cm, sizeof(cm), " sample=0 n_samples=1 method=bridge solver=%s nfe=%d%s%s", res->solver, res->nfe,
                      res->ode_method ? " ode_method=" : "", res->ode_method ? res->ode_method : "");
        else
            kv_format(cm, sizeof(cm), " sample=%d n_samples=%d seed=%llu steps=%d resamplings=%d jump=%d", b, N,
                      (unsigned long long)seed, a->steps ? a->steps : c->sampling_timesteps, a->resamplings, a->jump);
        if (res->score) kv_format(cm, sizeof(cm), " rank=%d confidence=%.9g", r + 1, (double)res->score[b]);
        kv_string(cm, sizeof(cm), "reactant", res->R->path);
        kv_string(cm, sizeof(cm), "product", res->product);
        kv_string(cm, sizeof(cm), "weights", setup->wpath);
        kv_format(cm, sizeof(cm), " weights_crc32=%08x trained=%s", (unsigned)c->crc32, c->trained ? "T" : "F");
        if (res->score) {
            kv_string(cm, sizeof(cm), "confidence_weights", setup->cpath);
            kv_format(cm, sizeof(cm), " confidence_crc32=%08x", (unsigned)oard_model_config(setup->conf)->crc32);
        }
        kv_format(cm, sizeof(cm), " precision=%s program=\"oa_reactdiff %s\"", OARD_REAL_NAME, OARD_VERSION);
        write_frame(af.f, n, res->R->z, res->ts + (size_t)b * n * nf, nf, res->inv, shift, cm);
    }
    if (!rc) rc = atomic_close(&af, 1, err);
    return rc;
}

/* the bridge's settings from the command line (defaults: upstream's evaluation, ode
 * midpoint with nfe 10) */
static int bridge_options(const Args *a, oard_bridge_opts *o, char *err) {
    memset(o, 0, sizeof(*o));
    const char *s = a->solver ? a->solver : "ode", *m = a->ode_method ? a->ode_method : "midpoint";
    o->solver = !strcmp(s, "ode") ? OARD_SOLVER_ODE : !strcmp(s, "ddpm") ? OARD_SOLVER_DDPM : !strcmp(s, "ei") ? OARD_SOLVER_EI : -1;
    if (o->solver < 0) return fail(err, OARD_ERR_ARG, "--solver: '%s' is not ode, ddpm or ei", s);
    o->ode_method = !strcmp(m, "midpoint") ? OARD_ODE_MIDPOINT : !strcmp(m, "euler") ? OARD_ODE_EULER : -1;
    if (o->ode_method < 0) return fail(err, OARD_ERR_ARG, "--ode-method: '%s' is not midpoint or euler", m);
    if (a->ode_method && o->solver != OARD_SOLVER_ODE) return fail(err, OARD_ERR_ARG, "--ode-method applies to --solver ode");
    o->nfe = a->nfe ? a->nfe : 10;
    return OARD_OK;
}

static void superpose_rotation(int n, const double *a, const double *b, const int *map, double R[9]);

/* Move the n points mob (n, 3) onto ref by the best proper rotation about their centroids
 * and the translation of centroids (Kabsch; reflections are never used). */
static int fit_onto(int n, double *mob, const double *ref) {
    double cm[3] = {0, 0, 0}, cr[3] = {0, 0, 0}, R[9];
    double *a = xcalloc((size_t)n * 6, sizeof(double)), *b = a ? a + 3 * n : NULL;
    if (!a) return OARD_ERR_NOMEM;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < 3; k++) {
            cm[k] += mob[3 * i + k] / n;
            cr[k] += ref[3 * i + k] / n;
        }
    for (int i = 0; i < n; i++)
        for (int k = 0; k < 3; k++) {
            a[3 * i + k] = mob[3 * i + k] - cm[k];
            b[3 * i + k] = ref[3 * i + k] - cr[k];
        }
    superpose_rotation(n, a, b, NULL, R);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < 3; k++)
            mob[3 * i + k] = R[3 * k] * a[3 * i] + R[3 * k + 1] * a[3 * i + 1] + R[3 * k + 2] * a[3 * i + 2] + cr[k];
    free(a);
    return OARD_OK;
}


/* run_model.py's pre-treatment: R centred on its plain centroid, P fitted onto it (Kabsch),
 * both written with %.6f and read back; rows in the file's atom order */
static int bridge_pretreat(const oard_config *c, Molecule *R, Molecule *P, const int *ident, real *const xh[3], int nf) {
    int n = R->n;
    double cen[3] = {0, 0, 0};
    for (int i = 0; i < n; i++)
        for (int k = 0; k < 3; k++) cen[k] += R->xyz[3 * i + k] / n;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < 3; k++) R->xyz[3 * i + k] -= cen[k];
    if (fit_onto(n, P->xyz, R->xyz)) return OARD_ERR_NOMEM;
    for (int i = 0; i < 3 * n; i++) { /* the %.6f round trip */
        char b[64];
        snprintf(b, sizeof(b), "%.6f", R->xyz[i]); R->xyz[i] = strtod(b, NULL);
        snprintf(b, sizeof(b), "%.6f", P->xyz[i]); P->xyz[i] = strtod(b, NULL);
    }
    fill_rows(c, R, ident, 0, xh[0], nf);
    fill_rows(c, R, ident, 0, xh[1], nf); /* the TS: the reactant's atoms; its positions are not read */
    fill_rows(c, P, ident, 0, xh[2], nf);
    for (int k = 0; k < 3; k++) /* put the TS back at the reactant's place */
        for (int i = 0; i < n; i++) R->xyz[3 * i + k] += cen[k];
    return OARD_OK;
}

/* One reaction with a bridge model: R and P atom-mapped, one deterministic candidate. */
static int ts_bridge_one(const TsSetup *setup, Molecule *R, Molecule *P, const char *ppath, const char *out, const char *name,
                         char *err) {
    const oard_config *c = oard_model_config(setup->model);
    const Args *a = setup->a;
    oard_bridge_opts o;
    int rc = bridge_options(a, &o, err), n = R->n, nf = c->node_nfs[0];
    if (!rc && P->n != n)
        rc = fail(err, OARD_ERR_FORMAT, "%s: %d atoms, %s has %d", ppath, P->n, R->path, n);
    for (int i = 0; !rc && i < n; i++) /* the bridge needs the atom mapping: element by element */
        if (P->z[i] != R->z[i])
            rc = fail(err, OARD_ERR_FORMAT, "%s: atom %d is %s, %s has %s there (a bridge model needs R and P atom-mapped: "
                      "the same atoms in the same order)", ppath, i + 1, ELEMENT_SYMBOLS[P->z[i]], R->path,
                      ELEMENT_SYMBOLS[R->z[i]]);
    real *xh[3] = {NULL, NULL, NULL}, *ts = rc ? NULL : xcalloc((size_t)n * nf, sizeof(real));
    real *pos = rc ? NULL : xcalloc((size_t)n * 3, sizeof(real));
    int *ident = rc ? NULL : xcalloc((size_t)n, sizeof(int)), zero = 0;
    for (int f = 0; !rc && f < 3; f++)
        if (!(xh[f] = xcalloc((size_t)n * nf, sizeof(real)))) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
    if (!rc && (!ts || !pos || !ident)) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
    if (!rc) {
        for (int i = 0; i < n; i++) ident[i] = i;
        if (bridge_pretreat(c, R, P, ident, xh, nf)) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
    }
    if (!rc) {
        oard_batch batch = {1, &n, a->threads};
        Progress prog = {name ? name : "ts", {0, 0}};
        clock_gettime(CLOCK_MONOTONIC, &prog.t0);
        o.progress = isatty(2) ? progress_report : NULL; o.progress_ctx = &prog;
        rc = oard_bridge_sample(setup->model, &batch, &o, NULL, (const real *const *)xh, pos, NULL, NULL, err);
        if (rc && name) {
            char tmp[OARD_ERRLEN];
            snprintf(tmp, sizeof(tmp), "%s", err);
            fail(err, rc, "%s: %s", R->path, tmp);
        }
    }
    if (!rc) {
        for (int i = 0; i < n; i++) memcpy(ts + (size_t)i * nf, pos + 3 * i, 3 * sizeof(real));
        static const char *const solvers[3] = {"ode", "ddpm", "ei"};
        TsResult r = {R, ppath, ident, ts, NULL, &zero, solvers[o.solver], o.solver == OARD_SOLVER_ODE ?
                      (o.ode_method == OARD_ODE_EULER ? "euler" : "midpoint") : NULL, o.nfe};
        rc = write_ts_file(setup, &r, out, name, 0, err);
    }
    for (int f = 0; f < 3; f++) free(xh[f]);
    free(ts); free(pos); free(ident);
    return rc;
}

/* One reaction: read, check, inpaint N candidates, score, write. */
static int ts_one(const TsSetup *setup, const char *rpath, const char *ppath, const char *out, const char *name,
                  uint64_t seed, char *err) {
    const oard_config *c = oard_model_config(setup->model);
    const Args *a = setup->a;
    if (c->objective == OARD_OBJECTIVE_BRIDGE) {
        Molecule R, P;
        int rc = read_xyz(rpath, &R, err);
        if (rc) return rc;
        rc = read_xyz(ppath, &P, err);
        if (!rc) rc = check_model_elements(c, &R, err);
        if (!rc) rc = ts_bridge_one(setup, &R, &P, ppath, out, name, err);
        mol_free(&R); mol_free(&P);
        return rc;
    }
    Molecule R, P;
    int rc = read_xyz(rpath, &R, err);
    if (rc) return rc;
    rc = read_xyz(ppath, &P, err);
    if (rc) {
        mol_free(&R);
        return rc;
    }
    rc = same_composition(&R, &P, err);
    if (!rc) rc = check_model_elements(c, &R, err);
    int N = a->n, n = R.n, nf = c->node_nfs[0];
    real *xh[3] = {NULL, NULL, NULL}, *res[3] = {NULL, NULL, NULL}, *score = NULL;
    int *pr = NULL, *pp = NULL, *inv = NULL, *order = NULL, *sizes = rc ? NULL : xcalloc((size_t)N, sizeof(int));
    oard_sampler_opts o = {a->steps, NULL, 0, a->resamplings, a->jump, NULL, NULL};
    oard_batch batch = {N, sizes, a->threads};
    if (!rc && !sizes) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
    for (int b = 0; !rc && b < N; b++) sizes[b] = n;
    if (!rc) /* the whole run, inputs and outputs included, before they are allocated */
        rc = sampler_check_memory(setup->model, &batch, &o, 1, 6.0 * N * n * nf * sizeof(real) + (3.0 * n + N) * sizeof(int), err);
    if (!rc) {
        pr = xcalloc((size_t)n, sizeof(int)); pp = xcalloc((size_t)n, sizeof(int)); inv = xcalloc((size_t)n, sizeof(int));
        order = xcalloc((size_t)N, sizeof(int));
    }
    for (int f = 0; !rc && f < 3; f++) {
        xh[f] = xcalloc((size_t)N * n * nf, sizeof(real));
        res[f] = xcalloc((size_t)N * n * nf, sizeof(real));
        if (!xh[f] || !res[f]) rc = rc ? rc : fail(err, OARD_ERR_NOMEM, "out of memory");
    }
    if (!rc && (!pr || !pp || !inv || !order)) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
    if (!rc) {
        if (canonical_order(&R, pr) || canonical_order(&P, pp)) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
    }
    if (!rc) {
        for (int k = 0; k < n; k++) inv[pr[k]] = k;
        for (int b = 0; b < N; b++) {
            order[b] = b;
            fill_rows(c, &R, pr, 0, xh[0] + (size_t)b * n * nf, nf);
            fill_rows(c, &R, pr, 0, xh[1] + (size_t)b * n * nf, nf); /* TS: the reactant's atoms */
            fill_rows(c, &P, pp, 0, xh[2] + (size_t)b * n * nf, nf);
        }
        Progress prog = {name ? name : "ts", {0, 0}};
        clock_gettime(CLOCK_MONOTONIC, &prog.t0);
        o.progress = isatty(2) ? progress_report : NULL; o.progress_ctx = &prog;
        oard_rng rng;
        oard_rng_seed(&rng, seed);
        const real *fixed[3] = {xh[0], xh[1], xh[2]};
        rc = oard_inpaint(setup->model, &batch, &o, NULL, fixed, res, &rng, err);
        if (rc && name) {
            char tmp[OARD_ERRLEN];
            snprintf(tmp, sizeof(tmp), "%s", err);
            fail(err, rc, "%s: %s", rpath, tmp);
        }
        if (!rc && setup->conf) { /* the recommender: each candidate with the given R and P, best first */
            Molecule TS = {n, R.z, xcalloc((size_t)n * 3, sizeof(double)), "(candidate)"};
            const Molecule *M3[3] = {&R, &TS, &P};
            score = xcalloc((size_t)N, sizeof(real));
            if (!score || !TS.xyz) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
            for (int b = 0; !rc && b < N; b++) {
                for (int i = 0; i < n; i++)
                    for (int k = 0; k < 3; k++) TS.xyz[3 * i + k] = (double)res[1][((size_t)b * n + inv[i]) * nf + k];
                rc = score_reaction(setup->conf, M3, a->threads, &score[b], err);
            }
            free(TS.xyz);
            for (int i = 1; !rc && i < N; i++)
                for (int j = i; j > 0 && cmp_score_desc(score, order[j - 1], order[j]); j--) {
                    int t = order[j];
                    order[j] = order[j - 1]; order[j - 1] = t;
                }
        }
        if (!rc) {
            TsResult r = {&R, ppath, inv, res[1], score, order, NULL, NULL, 0};
            rc = write_ts_file(setup, &r, out, name, seed, err);
        }
    }
    for (int f = 0; f < 3; f++) { free(xh[f]); free(res[f]); }
    free(pr); free(pp); free(inv); free(sizes); free(order); free(score);
    mol_free(&R); mol_free(&P);
    return rc;
}

/* ---- ts --list: batch of reactions ---- */
typedef struct {
    char *react, *prod, *name;
    int line;
} ListEntry;

static uint64_t fnv1a64(const char *s) {
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* per-reaction seed: depends on the run's seed and the reaction's name only, so a shard,
 * a rerun or a reordered list gives every reaction the same candidates */
static uint64_t reaction_seed(uint64_t seed, const char *name) {
    uint64_t x = seed ^ fnv1a64(name);
    return splitmix64(&x);
}

static char *path_join(const char *dir, const char *p) {
    size_t n = strlen(dir) + strlen(p) + 2;
    char *s = malloc(n);
    if (s) {
        if (p[0] == '/' || !*dir) snprintf(s, n, "%s", p);
        else snprintf(s, n, "%s/%s", dir, p);
    }
    return s;
}

static int cmp_list_name(const void *a, const void *b) {
    const ListEntry *x = *(const ListEntry *const *)a, *y = *(const ListEntry *const *)b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x->line > y->line) - (x->line < y->line);
}

/* Every name once, checked by sorting (O(n log n)): the repeat reported is the one on the
 * earliest line, naming the line where the name was first used. */
static int unique_names(const char *path, ListEntry *L, int n, char *err) {
    const ListEntry **s = xcalloc((size_t)n, sizeof(*s));
    if (!s) return fail(err, OARD_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n; i++) s[i] = &L[i];
    qsort(s, (size_t)n, sizeof(*s), cmp_list_name);
    const ListEntry *dup = NULL, *first = NULL;
    for (int i = 1, g = 0; i < n; i++) {
        if (strcmp(s[i]->name, s[g]->name)) g = i;
        else if (!dup || s[i]->line < dup->line) { dup = s[i]; first = s[g]; }
    }
    free(s);
    if (dup)
        return fail(err, OARD_ERR_FORMAT, "%s:%d: name '%.200s' is already used on line %d", path, dup->line, dup->name,
                    first->line);
    return OARD_OK;
}

/* List file: one reaction per line, "REACTANT.xyz PRODUCT.xyz [NAME]"; '#' starts a comment;
 * relative paths are relative to the list file's directory; NAME defaults to the reactant
 * file's name without .xyz, and must be unique (it names the output DIR/NAME.xyz). */
static int read_list_stream(FILE *f, const char *path, ListEntry **out, int *count, char *err) {
    *out = NULL; *count = 0;
    char dir[4096], line[8192];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    else snprintf(dir, sizeof(dir), ".");
    int rc = OARD_OK, lineno = 0, cap = 0;
    ListEntry *L = NULL;
    while (!rc && fgets(line, sizeof(line), f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f)) {
            rc = fail(err, OARD_ERR_FORMAT, "%s:%d: line too long", path, lineno);
            break;
        }
        char *hash = strchr(line, '#');
        if (hash) *hash = 0;
        char *tok[4];
        int nt = 0;
        for (char *p = strtok(line, " \t\r\n"); p; p = strtok(NULL, " \t\r\n"))
            if (nt < 4) tok[nt++] = p;
            else nt = 5;
        if (nt == 0) continue;
        if (nt < 2 || nt > 3) {
            rc = fail(err, OARD_ERR_FORMAT, "%s:%d: expected 'REACTANT.xyz PRODUCT.xyz [NAME]'", path, lineno);
            break;
        }
        const char *name = tok[2]; /* whole, never cut: uniqueness and the length limit see all of it */
        size_t ln;
        if (nt == 2) {
            const char *b = strrchr(tok[0], '/');
            name = b ? b + 1 : tok[0];
        }
        ln = strlen(name);
        if (nt == 2 && ln > 4 && !strcmp(name + ln - 4, ".xyz")) ln -= 4;
        for (size_t q = 0; q < ln && !rc; q++)
            if (!isalnum((unsigned char)name[q]) && name[q] != '_' && name[q] != '-' && name[q] != '.')
                rc = fail(err, OARD_ERR_FORMAT, "%s:%d: name '%.*s' may only use letters, digits, '_', '-', '.'", path, lineno,
                          (int)(ln < 200 ? ln : 200), name);
        if (!rc && (!ln || name[0] == '.'))
            rc = fail(err, OARD_ERR_FORMAT, "%s:%d: name '%.*s' must not be empty or start with '.'", path, lineno,
                      (int)(ln < 200 ? ln : 200), name);
        if (rc) break;
        if (*count == cap) {
            cap = cap ? 2 * cap : 64;
            ListEntry *nl = realloc(L, (size_t)cap * sizeof(*L));
            if (!nl) {
                rc = fail(err, OARD_ERR_NOMEM, "out of memory");
                break;
            }
            L = nl;
        }
        ListEntry *e = &L[(*count)++];
        e->react = path_join(dir, tok[0]); e->prod = path_join(dir, tok[1]); e->name = malloc(ln + 1); e->line = lineno;
        if (!e->react || !e->prod || !e->name) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
        else { memcpy(e->name, name, ln); e->name[ln] = 0; }
    }
    if (!rc && ferror(f)) rc = fail(err, OARD_ERR_IO, "%s: read error", path);
    if (!rc && *count == 0) rc = fail(err, OARD_ERR_FORMAT, "%s: no reactions in the list", path);
    *out = L;
    if (!rc) rc = unique_names(path, L, *count, err);
    return rc;
}

static void list_free(ListEntry *L, int n) {
    for (int i = 0; i < n; i++) { free(L[i].react); free(L[i].prod); free(L[i].name); }
    free(L);
}

static int read_list(const char *path, ListEntry **out, int *count, char *err) {
    *out = NULL; *count = 0;
    FILE *f = fopen(path, "r");
    if (!f) return fail(err, OARD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    int rc = read_list_stream(f, path, out, count, err);
    fclose(f);
    if (rc) { list_free(*out, *count); *out = NULL; *count = 0; }
    return rc;
}

/* Before any reaction is computed: --outdir is (made) a writable directory, and every
 * output of this shard, DIR/NAME.xyz, is a name the file system takes, with room for its
 * temporary file's suffix, and is not something other than a regular file. */
static int check_outdir(const Args *a, const ListEntry *L, int n, char *err) {
    struct stat st;
    if (mkdir(a->outdir, 0777) != 0 && errno != EEXIST)
        return fail(err, OARD_ERR_IO, "%s: cannot create directory: %s", a->outdir, strerror(errno));
    if (stat(a->outdir, &st) != 0) return fail(err, OARD_ERR_IO, "%s: cannot create directory: %s", a->outdir, strerror(errno));
    if (!S_ISDIR(st.st_mode)) return fail(err, OARD_ERR_IO, "%s: not a directory (--outdir)", a->outdir);
    long name_max = pathconf(a->outdir, _PC_NAME_MAX);
    if (name_max <= 0) name_max = 255;
    const long room = name_max - (long)strlen(".xyz.tmp.XXXXXX"); /* the temporary file's name is the longest */
    int rc = OARD_OK, first = -1;
    for (int k = 0; !rc && k < n; k++) {
        if (k % a->shard_n != a->shard_i) continue;
        size_t len = strlen(L[k].name);
        if ((long)len > room) {
            rc = fail(err, OARD_ERR_FORMAT, "%s:%d: name '%.40s...' has %zu characters; %s takes at most %ld (%ld for the file name with .xyz and its temporary suffix)",
                      a->list, L[k].line, L[k].name, len, a->outdir, room, name_max);
            break;
        }
        char *out = malloc(strlen(a->outdir) + len + 8);
        if (!out) return fail(err, OARD_ERR_NOMEM, "out of memory");
        sprintf(out, "%s/%s.xyz", a->outdir, L[k].name);
        const char *what = non_regular(out);
        if (what) rc = fail(err, OARD_ERR_IO, "%s: exists and is %s, not a regular file; not replaced", out, what);
        else if (first < 0 && access(out, F_OK) != 0) { first = k; rc = check_output(out, err); } /* writable? */
        free(out);
    }
    return rc;
}

static int ts_batch(const TsSetup *setup, char *err) {
    const Args *a = setup->a;
    if (!a->outdir) return fail(err, OARD_ERR_ARG, "ts --list needs --outdir DIR");
    ListEntry *L;
    int n, rc = read_list(a->list, &L, &n, err);
    if (rc) return rc;
    rc = check_outdir(a, L, n, err);
    if (rc) {
        list_free(L, n);
        return rc;
    }
    int done = 0, skipped = 0, failed = 0, mine = 0;
    for (int k = 0; !rc && k < n; k++) {
        if (k % a->shard_n != a->shard_i) continue;
        mine++;
        char *out = malloc(strlen(a->outdir) + strlen(L[k].name) + 8);
        if (!out) {
            rc = fail(err, OARD_ERR_NOMEM, "out of memory");
            break;
        }
        sprintf(out, "%s/%s.xyz", a->outdir, L[k].name);
        if (access(out, F_OK) == 0) {
            fprintf(stderr, "oa_reactdiff: %s: done already (%s), skipped\n", L[k].name, out);
            skipped++;
        } else {
            char e2[OARD_ERRLEN];
            int r = ts_one(setup, L[k].react, L[k].prod, out, L[k].name, reaction_seed(a->seed, L[k].name), e2);
            if (r) {
                fprintf(stderr, "oa_reactdiff: %s (%s:%d): %s\n", L[k].name, a->list, L[k].line, e2);
                failed++;
                if (r == OARD_ERR_NOMEM || r == OARD_ERR_MODEL) rc = fail(err, r, "%s", e2); /* would fail again */
            } else {
                fprintf(stderr, "oa_reactdiff: %s: wrote %s\n", L[k].name, out);
                done++;
            }
        }
        free(out);
    }
    fprintf(stderr, "oa_reactdiff: shard %d/%d: %d reactions of %d in the list; %d computed, %d already done, %d failed\n",
            a->shard_i, a->shard_n, mine, n, done, skipped, failed);
    list_free(L, n);
    if (!rc && failed) {
        fail(err, 0, "%d of %d reactions failed (messages above)", failed, mine);
        rc = -EXIT_BATCH;
    }
    return rc;
}

static int cmd_ts(const Args *a, char *err) {
    char wbuf[4200];
    TsSetup setup = {NULL, NULL, NULL, a->confidence, a};
    if (a->list ? a->npos != 0 : a->npos != 2)
        return fail(err, OARD_ERR_ARG, a->list ? "ts --list takes no REACTANT/PRODUCT arguments" : "ts needs REACTANT.xyz and PRODUCT.xyz (or --list FILE)");
    if (!a->list && (a->outdir || a->shard_n > 1)) return fail(err, OARD_ERR_ARG, "--outdir and --shard apply to ts --list");
    if (a->list && a->out) return fail(err, OARD_ERR_ARG, "ts --list writes DIR/NAME.xyz; use --outdir, not -o");
    int rc = a->list ? OARD_OK : check_output(a->out ? a->out : "ts.xyz", err); /* before any work */
    if (!rc) rc = find_weights(a->weights, wbuf, sizeof(wbuf), &setup.wpath, err);
    if (!rc) rc = load_model(setup.wpath, OARD_KIND_DENOISER, &setup.model, err);
    if (!rc && a->confidence) {
        rc = load_model(a->confidence, OARD_KIND_CONFIDENCE, &setup.conf, err);
        const oard_config *c = rc ? NULL : oard_model_config(setup.model), *cc = rc ? NULL : oard_model_config(setup.conf);
        if (!rc && (cc->n_elements != c->n_elements || memcmp(cc->element_z, c->element_z, sizeof(c->element_z)) ||
                    cc->node_nfs[0] != c->node_nfs[0]))
            rc = fail(err, OARD_ERR_MODEL, "%s: the confidence model's element table differs from %s's", a->confidence, setup.wpath);
    }
    if (!rc) {
        const oard_config *c = oard_model_config(setup.model);
        int bridge = c->objective == OARD_OBJECTIVE_BRIDGE;
        if (bridge && a->given_diffusion)
            rc = fail(err, OARD_ERR_ARG, "%s is a bridge (React-OT) model: --steps, --resamplings and --jump apply to diffusion "
                      "models (the bridge takes --solver, --nfe, --ode-method)", setup.wpath);
        else if (!bridge && a->given_bridge)
            rc = fail(err, OARD_ERR_ARG, "%s is a diffusion model: --solver, --nfe and --ode-method apply to bridge (React-OT) models", setup.wpath);
        else if (bridge && a->n != 1)
            rc = fail(err, OARD_ERR_ARG, "%s is a bridge (React-OT) model: it is deterministic and gives one candidate (-n 1)", setup.wpath);
        else if (bridge && setup.conf)
            rc = fail(err, OARD_ERR_ARG, "--confidence ranks several candidates; a bridge model gives one");
        else if (bridge && a->nfe >= c->sb_timesteps)
            rc = fail(err, OARD_ERR_ARG, "--nfe %d: at most %d for this model's schedule", a->nfe, c->sb_timesteps - 1);
    }
    if (!rc) rc = a->list ? ts_batch(&setup, err) : ts_one(&setup, a->pos[0], a->pos[1], a->out ? a->out : "ts.xyz", NULL, a->seed, err);
    if (!rc && !a->list)
        fprintf(stderr, "oa_reactdiff: wrote %d TS candidate%s to %s\n", a->n, a->n > 1 ? "s" : "", a->out ? a->out : "ts.xyz");
    oard_model_free(setup.model);
    oard_model_free(setup.conf);
    return rc;
}

/* ---- sample: whole reactions from atom types ---- */

/* "C,N,O,H", "C2,H4,O" or "C2H4O": element symbols, each with an optional count */
static int parse_atoms(const char *s, Molecule *mol, char *err) {
    memset(mol, 0, sizeof(*mol));
    mol->path = "--atoms";
    int cap = 0;
    for (const char *p = s; *p;) {
        if (*p == ',' || isspace((unsigned char)*p)) {
            p++;
            continue;
        }
        char sym[4] = {0};
        if (!isalpha((unsigned char)*p)) { mol_free(mol); return fail(err, OARD_ERR_ARG, "--atoms: unexpected '%c' in '%s'", *p, s); }
        sym[0] = *p++;
        if (islower((unsigned char)*p)) sym[1] = *p++;
        long cnt = 1;
        if (isdigit((unsigned char)*p)) {
            char *end;
            cnt = strtol(p, &end, 10);
            p = end;
            if (cnt < 1 || cnt > 10000) { mol_free(mol); return fail(err, OARD_ERR_ARG, "--atoms: bad count for %s", sym); }
        }
        int z = atomic_number(sym);
        if (!z || isdigit((unsigned char)sym[0])) { mol_free(mol); return fail(err, OARD_ERR_ARG, "--atoms: unknown element '%s'", sym); }
        for (long k = 0; k < cnt; k++) {
            if (mol->n == cap) {
                cap = cap ? 2 * cap : 16;
                int *nz = realloc(mol->z, (size_t)cap * sizeof(int));
                if (!nz) { mol_free(mol); return fail(err, OARD_ERR_NOMEM, "out of memory"); }
                mol->z = nz;
            }
            mol->z[mol->n++] = z;
        }
    }
    if (mol->n == 0) { mol_free(mol); return fail(err, OARD_ERR_ARG, "--atoms: no atoms"); }
    mol->xyz = xcalloc((size_t)mol->n * 3, sizeof(double));
    if (!mol->xyz) { mol_free(mol); return fail(err, OARD_ERR_NOMEM, "out of memory"); }
    return OARD_OK;
}

static int cmd_sample(const Args *a, char *err) {
    if (!a->atoms) return fail(err, OARD_ERR_ARG, "sample needs --atoms, e.g. --atoms C2H4O or --atoms C,C,O,H,H,H,H");
    if (a->npos) return fail(err, OARD_ERR_ARG, "sample: unexpected argument '%s'", a->pos[0]);
    char wbuf[4200];
    const char *wpath;
    oard_model *m = NULL;
    Molecule mol;
    int rc = parse_atoms(a->atoms, &mol, err);
    if (rc) return rc;
    rc = find_diffusion_weights(a->weights, wbuf, sizeof(wbuf), &wpath, err);
    if (!rc) rc = load_model(wpath, OARD_KIND_DENOISER, &m, err);
    const oard_config *c = rc ? NULL : oard_model_config(m);
    if (!rc && c->objective == OARD_OBJECTIVE_BRIDGE)
        rc = fail(err, OARD_ERR_MODEL, "%s is a bridge (React-OT) model: it makes a TS from R and P; sample needs a diffusion model", wpath);
    if (!rc) rc = check_model_elements(c, &mol, err);
    int N = a->n, n = mol.n, nf = c ? c->node_nfs[0] : 0;
    real *xh[3] = {NULL, NULL, NULL};
    const char *prefix = a->out ? a->out : "sample", *names[3] = {"react", "ts", "prod"};
    int width = 1;
    for (int x = N - 1; x >= 10; x /= 10) width++;
    char path[4200];
    if (!rc && snprintf(path, sizeof(path), "%s_%0*d_%s.xyz", prefix, width, 0, names[0]) >= (int)sizeof(path))
        rc = fail(err, OARD_ERR_ARG, "-o: prefix too long");
    if (!rc) rc = check_output(path, err); /* the first output, before any work */
    int *ident = NULL, *sizes = rc ? NULL : xcalloc((size_t)N, sizeof(int));
    oard_sampler_opts o = {a->steps, NULL, 0, 1, 1, NULL, NULL};
    oard_batch batch = {N, sizes, a->threads};
    if (!rc && !sizes) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
    for (int b = 0; !rc && b < N; b++) sizes[b] = n;
    if (!rc) rc = sampler_check_memory(m, &batch, &o, 0, 3.0 * N * n * nf * sizeof(real) + (double)n * sizeof(int), err);
    if (!rc && !(ident = xcalloc((size_t)n, sizeof(int)))) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
    for (int i = 0; !rc && i < n; i++) ident[i] = i;
    for (int f = 0; !rc && f < 3; f++) {
        xh[f] = xcalloc((size_t)N * n * nf, sizeof(real));
        if (!xh[f]) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
        for (int b = 0; !rc && b < N; b++) fill_rows(c, &mol, ident, 0, xh[f] + (size_t)b * n * nf, nf);
    }
    if (!rc) {
        Progress prog = {"sample", {0, 0}};
        clock_gettime(CLOCK_MONOTONIC, &prog.t0);
        o.progress = isatty(2) ? progress_report : NULL; o.progress_ctx = &prog;
        oard_rng rng;
        oard_rng_seed(&rng, a->seed);
        rc = oard_sample(m, &batch, &o, NULL, xh, &rng, err);
    }
    double zero[3] = {0, 0, 0};
    for (int b = 0; !rc && b < N; b++)
        for (int f = 0; !rc && f < 3; f++) {
            char cm[8192] = "";
            if (snprintf(path, sizeof(path), "%s_%0*d_%s.xyz", prefix, width, b, names[f]) >= (int)sizeof(path)) {
                rc = fail(err, OARD_ERR_ARG, "-o: prefix too long");
                break;
            }
            kv_format(cm, sizeof(cm), " sample=%d n_samples=%d seed=%llu steps=%d object=%s", b, N,
                      (unsigned long long)a->seed, a->steps ? a->steps : c->sampling_timesteps, names[f]);
            kv_string(cm, sizeof(cm), "weights", wpath);
            kv_format(cm, sizeof(cm), " weights_crc32=%08x trained=%s precision=%s program=\"oa_reactdiff %s\"",
                      (unsigned)c->crc32, c->trained ? "T" : "F", OARD_REAL_NAME, OARD_VERSION);
            AtomicFile af;
            rc = atomic_open(&af, path, err);
            if (rc) break;
            write_frame(af.f, n, mol.z, xh[f] + (size_t)b * n * nf, nf, NULL, zero, cm);
            rc = atomic_close(&af, 1, err);
        }
    if (!rc) fprintf(stderr, "oa_reactdiff: wrote %d reaction%s to %s_*_{react,ts,prod}.xyz\n", N, N > 1 ? "s" : "", prefix);
    for (int f = 0; f < 3; f++) free(xh[f]);
    free(sizes); free(ident);
    mol_free(&mol);
    oard_model_free(m);
    return rc;
}

/* ---- rmsd ---- */
/* A may hold several frames (e.g. the candidates of ts.xyz): one line per frame. */
static int cmd_rmsd(const Args *a, char *err) {
    if (a->npos != 2) return fail(err, OARD_ERR_ARG, "rmsd needs two xyz files");
    Molecule *A, B;
    int nA, rc = read_xyz_frames(a->pos[0], &A, &nA, err);
    if (rc) return rc;
    rc = read_xyz(a->pos[1], &B, err);
    double *r = xcalloc((size_t)nA, sizeof(double));
    if (!rc && !r) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
    int flags = (a->same_order ? OARD_RMSD_SAME_ORDER : 0) | (a->no_reflection ? OARD_RMSD_NO_REFLECTION : 0) | a->method;
    for (int i = 0; !rc && i < nA; i++) {
        char where[32] = "";
        if (nA > 1) snprintf(where, sizeof(where), " (frame %d)", i + 1);
        if (A[i].n != B.n) rc = fail(err, OARD_ERR_FORMAT, "%s%s has %d atoms, %s has %d", A[i].path, where, A[i].n, B.path, B.n);
        if (!rc && !a->same_order) rc = same_composition(&A[i], &B, err);
        if (!rc) {
            rc = oard_rmsd(B.n, A[i].z, A[i].xyz, B.z, B.xyz, flags, &r[i], err);
            if (rc == OARD_ERR_ARG) rc = OARD_ERR_FORMAT; /* the files, not the command line, are at fault */
        }
    }
    for (int i = 0; !rc && i < nA; i++) printf("%.8f\n", r[i]); /* all or nothing */
    for (int i = 0; i < nA; i++) mol_free(&A[i]);
    free(A); free(r);
    mol_free(&B);
    return rc;
}

/* ---- score: the recommender ---- */
static int cmd_score(const Args *a, char *err) {
    if (a->npos != 3) return fail(err, OARD_ERR_ARG, "score needs REACTANT.xyz TS.xyz PRODUCT.xyz");
    if (!a->confidence) return fail(err, OARD_ERR_ARG, "score needs --confidence FILE (a confidence model)");
    oard_model *m = NULL;
    Molecule M[3];
    memset(M, 0, sizeof(M));
    int rc = load_model(a->confidence, OARD_KIND_CONFIDENCE, &m, err);
    for (int f = 0; !rc && f < 3; f++) rc = read_xyz(a->pos[f], &M[f], err);
    if (!rc) rc = same_composition(&M[0], &M[1], err);
    if (!rc) rc = same_composition(&M[0], &M[2], err);
    if (!rc) rc = check_model_elements(oard_model_config(m), &M[0], err);
    real score = 0;
    const Molecule *M3[3] = {&M[0], &M[1], &M[2]};
    if (!rc) rc = score_reaction(m, M3, a->threads, &score, err);
    if (!rc) printf("%.9g\n", (double)score);
    for (int f = 0; f < 3; f++) mol_free(&M[f]);
    oard_model_free(m);
    return rc;
}

/* ---- info ---- */
/* a metadata value of a weights file as `info` prints it: escaped (escape_text), "?" if absent */
static const char *info_text(char buf[][1100], int *k, const char *v) {
    escape_text(buf[*k], sizeof(buf[0]), v ? v : "?");
    return buf[(*k)++];
}

static int cmd_info(const Args *a, char *err) {
    if (a->npos != 1) return fail(err, OARD_ERR_ARG, "info needs one weights file");
    oard_model *m;
    int rc = load_weights(a->pos[0], 0, &m, err);
    if (rc) return rc;
    const oard_config *c = oard_model_config(m);
    char list[128], e[16][1100];
    int k = 0;
#define INFO_TEXT(v) info_text(e, &k, (v))
#define INFO_META(key) INFO_TEXT(oard_model_meta(m, key))
    element_list(c, list, sizeof(list));
    printf("file                %s\nkind                %s\nchecksum            crc32 %08x, verified\n", INFO_TEXT(a->pos[0]),
           c->kind == OARD_KIND_DENOISER ? "denoiser" : "confidence (recommender)", (unsigned)c->crc32);
    printf("format version      %s\n", oard_model_meta(m, "format_version") ? INFO_META("format_version") : "1");
    printf("LEFTNet             %d layers, hidden %d, %d radial, cutoff %g, in_hidden %d\n", c->num_layers,
           c->hidden_channels, c->num_radial, c->cutoff, c->in_hidden_channels);
    printf("flags               object_aware=%d legacy=%d reflect_equiv=%d update=%d pos_grad=%d single_layer_output=%d for_conf=%d\n",
           c->object_aware, c->legacy, c->reflect_equiv, c->update, c->pos_grad, c->single_layer_output, c->for_conf);
    printf("objects             %d (R, TS, P), node features %d, condition %d\n", c->n_fragments, c->node_nfs[0], c->condition_nf);
    printf("elements            %s\n", list);
    printf("parameters          %zu (excluding schedule tables and RBF buffers)\n", c->n_params);
    if (c->kind == OARD_KIND_DENOISER && c->objective == OARD_OBJECTIVE_BRIDGE)
        printf("objective           bridge (React-OT: the R-P midpoint transported to the TS; ts uses the bridge solvers)\n"
               "bridge schedule     SB, T=%d, beta_max %g, power %g, inv_power %g\n",
               c->sb_timesteps, c->sb_beta_max, c->sb_power, c->sb_inv_power);
    else if (c->kind == OARD_KIND_DENOISER)
        printf("objective           diffusion (OA-ReactDiff: ts inpaints the TS with RePaint)\n");
    if (c->kind == OARD_KIND_DENOISER && c->sampling_timesteps > 0)
        printf("sampling schedule   %s, T=%d, precision %g (training: %s, T=%d)%s\n", INFO_TEXT(c->sampling_schedule),
               c->sampling_timesteps, c->sampling_precision, INFO_TEXT(c->training_schedule), c->training_timesteps,
               c->objective == OARD_OBJECTIVE_BRIDGE ? " (diffusion tables kept from the model it started from; unused)" : "");
    printf("trained             %s\nsource              %s\nsource sha256       %s\ndescription         %s\n",
           c->trained ? "yes" : "NO (untrained weights: generated structures are not meaningful)", INFO_TEXT(c->source_file),
           INFO_TEXT(c->source_sha256), INFO_TEXT(c->description));
    if (oard_model_meta(m, "train_steps")) /* written by oa_reactdiff train */
        printf("training            %s steps on %s (%s reactions, split crc32 %s), val loss %s\n"
               "training config     %s\ntraining start      %s\n",
               INFO_META("train_steps"), INFO_META("train_data"), INFO_META("train_reactions"), INFO_META("train_split_crc32"),
               INFO_META("val_loss"), INFO_META("train_config"), INFO_META("train_init"));
#undef INFO_META
#undef INFO_TEXT
    oard_model_free(m);
    return OARD_OK;
}

/* ---- train: a denoiser on a reaction dataset ----
 * The loop of upstream's trainer (pl_trainer.py DDPMModule.training_step under Lightning):
 * per step a batch of reactions, t uniform in 0..T (EnVariationalDiffusion.forward's
 * randint), oard_train_loss, the adaptive clipping and AdamW of oard_optim_step. Upstream's
 * ProcessedTS1x(swapping_react_prod=True) adds every reaction a second time with reactant
 * and product exchanged, so an epoch here is a seeded shuffle of those 2N items (N without
 * --no-swap), batches run on across epochs. Everything a run depends on (parameters,
 * optimizer state, RNG states, epoch and position) is in the checkpoint, so N steps +
 * resume to 2N equals 2N steps bit for bit (in one build). */

typedef struct {
    char id[64];
    int n;
    real *xh[3]; /* R, TS, P rows: x, y, z, one-hot, Z (file atom order) */
} TrainRxn;

typedef struct {
    TrainRxn *r;
    int n;
    uint32_t crc; /* CRC-32 of the sorted ids, one per line */
} TrainSplit;

static void split_free(TrainSplit *s) {
    for (int i = 0; i < s->n; i++)
        for (int f = 0; f < 3; f++) free(s->r[i].xh[f]);
    free(s->r);
    memset(s, 0, sizeof(*s));
}

static int cmp_rxn_id(const void *a, const void *b) { return strcmp(((const TrainRxn *)a)->id, ((const TrainRxn *)b)->id); }

/* DIR/reactions/<id>/{react,ts,prod}.xyz: one frame each, the same atoms in the same order */
static int read_reaction(const char *dir, const oard_config *c, TrainRxn *r, char *err) {
    static const char *const names[3] = {"react", "ts", "prod"};
    Molecule M[3];
    char path[3][4200];
    int rc = OARD_OK, nf = c->node_nfs[0];
    memset(M, 0, sizeof(M));
    for (int f = 0; f < 3 && !rc; f++) {
        snprintf(path[f], sizeof(path[f]), "%s/reactions/%s/%s.xyz", dir, r->id, names[f]);
        rc = read_xyz(path[f], &M[f], err);
    }
    for (int f = 1; f < 3 && !rc; f++) {
        if (M[f].n != M[0].n)
            rc = fail(err, OARD_ERR_FORMAT, "%s: %d atoms, %s has %d (the three files need the same atoms in the same order)",
                      path[f], M[f].n, path[0], M[0].n);
        for (int i = 0; i < M[0].n && !rc; i++)
            if (M[f].z[i] != M[0].z[i])
                rc = fail(err, OARD_ERR_FORMAT, "%s: atom %d is %s, %s has %s there (the three files need the same atom order)",
                          path[f], i + 1, ELEMENT_SYMBOLS[M[f].z[i]], path[0], ELEMENT_SYMBOLS[M[0].z[i]]);
    }
    if (!rc && M[0].n < 2) rc = fail(err, OARD_ERR_FORMAT, "%s: a reaction needs at least 2 atoms", path[0]);
    if (!rc) rc = check_model_elements(c, &M[0], err);
    int *ident = rc ? NULL : xcalloc((size_t)M[0].n, sizeof(int));
    if (!rc && !ident) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
    for (int i = 0; !rc && i < M[0].n; i++) ident[i] = i;
    for (int f = 0; f < 3 && !rc; f++) {
        r->xh[f] = xcalloc((size_t)M[0].n * nf, sizeof(real));
        if (!r->xh[f]) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
        else fill_rows(c, &M[f], ident, 0, r->xh[f], nf);
    }
    r->n = M[0].n;
    free(ident);
    for (int f = 0; f < 3; f++) mol_free(&M[f]);
    return rc;
}

/* DIR/index.tsv (tab-separated, a header line naming the columns; "id" and "split" are
 * used): the train and val reactions, each sorted by id. */
static int read_dataset(const char *dir, const oard_config *c, TrainSplit *train, TrainSplit *val, char *err) {
    char path[4200], line[16384];
    memset(train, 0, sizeof(*train)); memset(val, 0, sizeof(*val));
    snprintf(path, sizeof(path), "%s/index.tsv", dir);
    FILE *f = fopen(path, "r");
    if (!f) return fail(err, OARD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    int rc = OARD_OK, lineno = 0, col_id = -1, col_split = -1, ncol = 0, cap[2] = {0, 0};
    TrainSplit *sp[2] = {train, val};
    while (!rc && fgets(line, sizeof(line), f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f)) {
            rc = fail(err, OARD_ERR_FORMAT, "%s:%d: line too long", path, lineno);
            break;
        }
        line[strcspn(line, "\r\n")] = 0;
        const char *id = "", *split = "";
        int nfld = 0;
        for (char *p = line;; p++) { /* split on tabs, empty fields kept; any number of columns */
            char *field = p;
            p = strchr(p, '\t');
            if (p) *p = 0;
            if (lineno == 1 && !strcmp(field, "id")) col_id = nfld;
            if (lineno == 1 && !strcmp(field, "split")) col_split = nfld;
            if (nfld == col_id) id = field;
            if (nfld == col_split) split = field;
            nfld++;
            if (!p) break;
        }
        if (lineno == 1) {
            ncol = nfld;
            if (col_id < 0 || col_split < 0)
                rc = fail(err, OARD_ERR_FORMAT, "%s:1: the header names no '%s' column (tab-separated: id ... split ...)", path,
                          col_id < 0 ? "id" : "split");
            continue;
        }
        if (nfld == 1 && !line[0]) continue; /* blank line */
        if (nfld != ncol) {
            rc = fail(err, OARD_ERR_FORMAT, "%s:%d: %d tab-separated fields, the header has %d", path, lineno, nfld, ncol);
            break;
        }
        int which = !strcmp(split, "train") ? 0 : !strcmp(split, "val") ? 1 : !strcmp(split, "test") ? 2 : -1;
        if (which < 0) {
            rc = fail(err, OARD_ERR_FORMAT, "%s:%d: split '%.40s' is not train, val or test", path, lineno, split);
            break;
        }
        int ok = *id && id[0] != '.' && strlen(id) < sizeof(train->r[0].id);
        for (const char *q = id; *q && ok; q++) ok = isalnum((unsigned char)*q) || *q == '_' || *q == '-' || *q == '.';
        if (!ok) {
            rc = fail(err, OARD_ERR_FORMAT, "%s:%d: id '%.40s' is not a plain name (letters, digits, '_', '-', '.')", path, lineno, id);
            break;
        }
        if (which == 2) continue;
        TrainSplit *s = sp[which];
        if (s->n == cap[which]) {
            cap[which] = cap[which] ? 2 * cap[which] : 64;
            TrainRxn *nr = realloc(s->r, (size_t)cap[which] * sizeof(TrainRxn));
            if (!nr) {
                rc = fail(err, OARD_ERR_NOMEM, "out of memory");
                break;
            }
            s->r = nr;
        }
        TrainRxn *r = &s->r[s->n++];
        memset(r, 0, sizeof(*r));
        snprintf(r->id, sizeof(r->id), "%s", id);
        rc = read_reaction(dir, c, r, err);
    }
    if (!rc && ferror(f)) rc = fail(err, OARD_ERR_IO, "%s: cannot read: %s", path, strerror(errno));
    fclose(f);
    if (!rc && lineno == 0) rc = fail(err, OARD_ERR_FORMAT, "%s: empty file", path);
    if (!rc && train->n == 0) rc = fail(err, OARD_ERR_FORMAT, "%s: no reactions in the train split", path);
    for (int w = 0; w < 2 && !rc; w++) {
        TrainSplit *s = sp[w];
        qsort(s->r, (size_t)s->n, sizeof(TrainRxn), cmp_rxn_id);
        s->crc = 0;
        for (int i = 0; i < s->n && !rc; i++) {
            if (i && !strcmp(s->r[i].id, s->r[i - 1].id))
                rc = fail(err, OARD_ERR_FORMAT, "%s: reaction id %s listed twice", path, s->r[i].id);
            s->crc = oard_crc32(s->crc, s->r[i].id, strlen(s->r[i].id));
            s->crc = oard_crc32(s->crc, "\n", 1);
        }
    }
    if (rc) { split_free(train); split_free(val); }
    return rc;
}

/* uniform integer in [0, n) from the generator's raw 64-bit output (rejection, no bias) */
static uint64_t rng_below(oard_rng *r, uint64_t n) {
    uint64_t lim = UINT64_MAX - UINT64_MAX % n, x;
    do x = xoshiro256ss(r->s);
    while (x >= lim);
    return x % n;
}

/* an oard_rng as one line and back: s0 s1 s2 s3 has_spare spare (hex float, exact) */
static void rng_format(const oard_rng *r, char *buf, size_t n) {
    snprintf(buf, n, "%016llx %016llx %016llx %016llx %d %a", (unsigned long long)r->s[0], (unsigned long long)r->s[1],
             (unsigned long long)r->s[2], (unsigned long long)r->s[3], r->has_spare, r->spare);
}

static int rng_parse(const char *s, oard_rng *r) {
    unsigned long long x[4];
    int spare, pos = 0;
    double v;
    memset(r, 0, sizeof(*r));
    if (!s || sscanf(s, "%llx %llx %llx %llx %d %la%n", &x[0], &x[1], &x[2], &x[3], &spare, &v, &pos) != 6 || s[pos])
        return 0;
    for (int k = 0; k < 4; k++) r->s[k] = x[k];
    r->has_spare = spare != 0; r->spare = v;
    return 1;
}

typedef struct {
    const Args *a;
    const char *dir, *data;
    oard_model *m;
    oard_optim *opt;
    TrainSplit train, val;
    int batch, swap, n_items, T;
    int bridge; /* objective bridge: t in 0..T-1, items aligned as the ts command aligns its inputs */
    int steps, val_every, ckpt_every; /* the run's end and its cadence */
    const char *description;          /* --description, or NULL */
    uint64_t seed;
    char init_desc[4300];
    /* the run's position: everything below goes into the checkpoint */
    long long epoch, pos;
    int *perm; /* the epoch's order of the n_items items */
    oard_rng rng_t, rng_noise;
    double val_loss;
    long long val_step;
    double elapsed;
} Trainer;

/* item k of an epoch: reaction k mod N, reactant and product exchanged for k >= N */
static void epoch_order(Trainer *tr) {
    oard_rng r;
    oard_rng_seed(&r, reaction_seed(tr->seed, "train:order") + (uint64_t)tr->epoch);
    for (int k = 0; k < tr->n_items; k++) tr->perm[k] = k;
    for (int k = tr->n_items - 1; k > 0; k--) { /* Fisher-Yates */
        int j = (int)rng_below(&r, (uint64_t)k + 1), t = tr->perm[k];
        tr->perm[k] = tr->perm[j]; tr->perm[j] = t;
    }
}

/* A bridge training item in the frame the ts command builds: P fitted onto R (as
 * run_model.py's Kabsch pre-treatment), then the TS fitted onto the midpoint (R + P)/2, so
 * the label (x_t - TS) holds no rotation the network could not see. Rows at of xh[f]. */
static int bridge_align(int n, int nf, real *const xh[3], size_t at) {
    double *p = malloc((size_t)n * 9 * sizeof(double)), *r = p ? p + 3 * n : NULL, *t = p ? p + 6 * n : NULL;
    if (!p) return OARD_ERR_NOMEM;
    double *pos[3] = {r, t, p};
    for (int f = 0; f < 3; f++)
        for (int i = 0; i < n; i++)
            for (int k = 0; k < 3; k++) pos[f][3 * i + k] = (double)xh[f][(at + (size_t)i) * nf + k];
    double *mid = malloc((size_t)n * 3 * sizeof(double));
    int rc = mid ? fit_onto(n, p, r) : OARD_ERR_NOMEM;
    for (int j = 0; !rc && j < 3 * n; j++) mid[j] = (r[j] + p[j]) / 2;
    if (!rc) rc = fit_onto(n, t, mid);
    for (int f = 1; f < 3; f++)
        for (int i = 0; i < n; i++)
            for (int k = 0; k < 3; k++) xh[f][(at + (size_t)i) * nf + k] = (real)pos[f][3 * i + k];
    free(mid);
    free(p);
    return rc;
}

/* a batch of B items (item k of split s: reaction k mod s->n, swapped when k >= s->n) in
 * upstream's node layout, fragment-major */
static int assemble_batch(const Trainer *tr, const TrainSplit *s, const int *items, int B, int *sizes, real *xh[3],
                          char *err) {
    int nf = oard_model_config(tr->m)->node_nfs[0];
    size_t rows = 0;
    for (int b = 0; b < B; b++) rows += (size_t)s->r[items[b] % s->n].n;
    for (int f = 0; f < 3; f++) {
        free(xh[f]);
        xh[f] = xcalloc(rows * nf, sizeof(real));
        if (!xh[f]) return fail(err, OARD_ERR_NOMEM, "out of memory");
    }
    size_t at = 0;
    for (int b = 0; b < B; b++) {
        const TrainRxn *r = &s->r[items[b] % s->n];
        int swapped = items[b] >= s->n;
        sizes[b] = r->n;
        for (int f = 0; f < 3; f++) {
            int src = swapped && f != 1 ? 2 - f : f;
            memcpy(xh[f] + at * nf, r->xh[src], (size_t)r->n * nf * sizeof(real));
        }
        if (tr->bridge) {
            int rc = bridge_align(r->n, nf, xh, at);
            if (rc) return fail(err, rc, "out of memory");
        }
        at += (size_t)r->n;
    }
    return OARD_OK;
}

/* The validation loss: every val reaction, then (with swapping, as upstream's val set) each
 * reversed, in batches of B, with t and noise from a generator seeded the same way every
 * time, so the numbers are comparable across steps. With EMA the EMA weights are used (as
 * upstream's EMACallback swaps them in for validation). The mean over samples. */
static int validate(Trainer *tr, double *out, char *err) {
    int n_items = tr->val.n * (tr->swap ? 2 : 1), B = tr->batch, rc = OARD_OK;
    int *items = xcalloc((size_t)B, sizeof(int)), *sizes = xcalloc((size_t)B, sizeof(int)), *t = xcalloc((size_t)B, sizeof(int));
    real *xh[3] = {NULL, NULL, NULL}, *params = oard_param_data(tr->m), *saved = NULL;
    size_t np = oard_param_size(tr->m);
    const real *ema = oard_optim_ema(tr->opt);
    if (!items || !sizes || !t) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
    if (!rc && ema) {
        saved = malloc(np * sizeof(real));
        if (!saved) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
        else { memcpy(saved, params, np * sizeof(real)); memcpy(params, ema, np * sizeof(real)); }
    }
    oard_rng rv;
    oard_rng_seed(&rv, reaction_seed(tr->seed, "train:val"));
    double sum = 0;
    for (int k0 = 0; !rc && k0 < n_items; k0 += B) {
        int nb = n_items - k0 < B ? n_items - k0 : B;
        for (int b = 0; b < nb; b++) { items[b] = k0 + b; t[b] = (int)rng_below(&rv, (uint64_t)tr->T + !tr->bridge); }
        rc = assemble_batch(tr, &tr->val, items, nb, sizes, xh, err);
        double loss = 0;
        oard_batch batch = {nb, sizes, tr->a->threads};
        if (!rc) rc = oard_train_loss(tr->m, &batch, (const real *const *)xh, NULL, t, &rv, &loss, NULL, NULL, err);
        sum += loss * nb;
    }
    if (saved) memcpy(params, saved, np * sizeof(real));
    *out = n_items ? sum / n_items : NAN;
    for (int f = 0; f < 3; f++) free(xh[f]);
    free(items); free(sizes); free(t); free(saved);
    return rc;
}

static const char *train_path(const Trainer *tr, const char *name, char *buf, size_t n) {
    snprintf(buf, n, "%s/%s", tr->dir, name);
    return buf;
}

/* a log for appending; a symbolic link put in its place is not followed */
static FILE *append_open(const char *path) {
    int fd = open(path, O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC);
    FILE *f = fd < 0 ? NULL : fdopen(fd, "a");
    if (fd >= 0 && !f) close(fd);
    return f;
}

static int write_checkpoint(Trainer *tr, char *err) {
    char path[4200], rt[160], rn[160], v[16][64];
    const char *meta[48];
    int k = 0, nv = 0;
#define KV(key, ...)                                    \
    do {                                                \
        snprintf(v[nv], sizeof(v[0]), __VA_ARGS__);     \
        meta[k++] = key;                                \
        meta[k++] = v[nv++];                            \
    } while (0)
    meta[k++] = "train.data"; meta[k++] = tr->data;
    meta[k++] = "train.init"; meta[k++] = tr->init_desc;
    KV("train.train_crc32", "%08x", (unsigned)tr->train.crc);
    KV("train.val_crc32", "%08x", (unsigned)tr->val.crc);
    KV("train.n_train", "%d", tr->train.n);
    KV("train.n_val", "%d", tr->val.n);
    KV("train.batch", "%d", tr->batch);
    KV("train.seed", "%llu", (unsigned long long)tr->seed);
    KV("train.swap", "%d", tr->swap);
    KV("train.epoch", "%lld", tr->epoch);
    KV("train.pos", "%lld", tr->pos);
    KV("train.val_loss", "%.17g", tr->val_loss);
    KV("train.val_step", "%lld", tr->val_step);
    KV("train.elapsed", "%.3f", tr->elapsed);
    KV("train.steps", "%d", tr->steps);
    KV("train.val_every", "%d", tr->val_every);
    KV("train.checkpoint_every", "%d", tr->ckpt_every);
#undef KV
    if (tr->description) { meta[k++] = "train.description"; meta[k++] = tr->description; }
    rng_format(&tr->rng_t, rt, sizeof(rt));
    rng_format(&tr->rng_noise, rn, sizeof(rn));
    meta[k++] = "train.rng_t"; meta[k++] = rt;
    meta[k++] = "train.rng_noise"; meta[k++] = rn;
    meta[k] = NULL;
    train_path(tr, "checkpoint.bin", path, sizeof(path));
    defer_signals(1);
    int rc = oard_checkpoint_save(path, tr->m, oard_param_data(tr->m), tr->opt, meta, err);
    defer_signals(0);
    return rc;
}

static const char *meta_of(char **meta, const char *key) {
    for (int i = 0; meta && meta[i]; i += 2)
        if (!strcmp(meta[i], key)) return meta[i + 1];
    return NULL;
}

/* The run's state from DIR/checkpoint.bin; options given on the command line must agree. */
static int resume_checkpoint(Trainer *tr, const char *path, char **meta, char *err) {
    const Args *a = tr->a;
    const oard_optim_opts *o = oard_optim_options(tr->opt);
    const char *v;
    char buf[64];
    long long x;
#define NEED(key) (v = meta_of(meta, key)) ? OARD_OK : fail(err, OARD_ERR_FORMAT, "%s: checkpoint has no %s", path, key)
    int rc = NEED("train.seed");
    if (!rc) tr->seed = strtoull(v, NULL, 10);
    if (!rc && a->seed_set && a->seed != tr->seed)
        rc = fail(err, OARD_ERR_ARG, "--seed %llu differs from the checkpoint's %s (a resumed run keeps its settings)",
                  (unsigned long long)a->seed, v);
    if (!rc) rc = NEED("train.batch");
    if (!rc) tr->batch = atoi(v);
    if (!rc && a->batch && a->batch != tr->batch)
        rc = fail(err, OARD_ERR_ARG, "--batch %d differs from the checkpoint's %d (a resumed run keeps its settings)", a->batch, tr->batch);
    if (!rc) rc = NEED("train.swap");
    if (!rc) tr->swap = atoi(v) != 0;
    if (!rc && a->no_swap && tr->swap) rc = fail(err, OARD_ERR_ARG, "--no-swap: the checkpoint's run swaps reactant and product");
    if (!rc && a->no_clip && o->clip) rc = fail(err, OARD_ERR_ARG, "--no-clip: the checkpoint's run clips gradients");
    if (!rc && !isnan(a->lr) && a->lr != o->lr) rc = fail(err, OARD_ERR_ARG, "--lr %g differs from the checkpoint's %g", a->lr, o->lr);
    if (!rc && !isnan(a->weight_decay) && a->weight_decay != o->weight_decay)
        rc = fail(err, OARD_ERR_ARG, "--weight-decay %g differs from the checkpoint's %g", a->weight_decay, o->weight_decay);
    if (!rc && !isnan(a->ema) && a->ema != o->ema_decay) rc = fail(err, OARD_ERR_ARG, "--ema %g differs from the checkpoint's %g", a->ema, o->ema_decay);
    if (!rc) rc = NEED("train.init");
    if (!rc) {
        if ((a->init || a->init_config) && strcmp(v, tr->init_desc))
            rc = fail(err, OARD_ERR_ARG, "--init/--init-config differ from the checkpoint's start (%s)", v);
        else snprintf(tr->init_desc, sizeof(tr->init_desc), "%s", v);
    }
    if (!rc) rc = NEED("train.train_crc32");
    if (!rc) snprintf(buf, sizeof(buf), "%08x", (unsigned)tr->train.crc);
    if (!rc && strcmp(v, buf))
        rc = fail(err, OARD_ERR_FORMAT, "%s/index.tsv: the train split (crc32 %s of its ids) is not the checkpoint's (%s)", tr->data, buf, v);
    if (!rc) rc = NEED("train.val_crc32");
    if (!rc) snprintf(buf, sizeof(buf), "%08x", (unsigned)tr->val.crc);
    if (!rc && strcmp(v, buf))
        rc = fail(err, OARD_ERR_FORMAT, "%s/index.tsv: the val split (crc32 %s of its ids) is not the checkpoint's (%s)", tr->data, buf, v);
    if (!rc) rc = NEED("train.epoch");
    if (!rc) tr->epoch = strtoll(v, NULL, 10);
    if (!rc) rc = NEED("train.pos");
    if (!rc) tr->pos = x = strtoll(v, NULL, 10);
    if (!rc && (tr->epoch < 0 || x < 0 || x > tr->train.n * (tr->swap ? 2 : 1)))
        rc = fail(err, OARD_ERR_FORMAT, "%s: data position out of range", path);
    if (!rc) rc = NEED("train.rng_t");
    if (!rc && !rng_parse(v, &tr->rng_t)) rc = fail(err, OARD_ERR_FORMAT, "%s: malformed train.rng_t", path);
    if (!rc) rc = NEED("train.rng_noise");
    if (!rc && !rng_parse(v, &tr->rng_noise)) rc = fail(err, OARD_ERR_FORMAT, "%s: malformed train.rng_noise", path);
    if (!rc) rc = NEED("train.val_loss");
    if (!rc) tr->val_loss = strtod(v, NULL);
    if (!rc) rc = NEED("train.val_step");
    if (!rc) tr->val_step = strtoll(v, NULL, 10);
    if (!rc) rc = NEED("train.elapsed");
    if (!rc) tr->elapsed = strtod(v, NULL);
#undef NEED
    return rc;
}

/* Keep the lines of a log up to step `upto` (and its '#' lines): a resumed run redoes the
 * steps after its checkpoint, so their lines are written again. */
static int truncate_log(const char *path, long long upto, const char *header, char *err) {
    FILE *f = fopen(path, "r");
    AtomicFile af;
    int rc = atomic_open(&af, path, err);
    if (rc) {
        if (f) fclose(f);
        return rc;
    }
    char line[1024];
    if (!f) fputs(header, af.f);
    while (f && fgets(line, sizeof(line), f)) {
        if (!strchr(line, '\n')) break; /* a cut last line */
        if (line[0] == '#' || strtoll(line, NULL, 10) <= upto) fputs(line, af.f);
    }
    if (f) fclose(f);
    return atomic_close(&af, 1, err);
}

static int write_final_model(Trainer *tr, char *err) {
    char path[4200], steps[32], tcrc[16], vcrc[16], ntr[16], nva[16], vloss[40], epoch[32], cfg[512], desc[600];
    const oard_optim_opts *o = oard_optim_options(tr->opt);
    long long done = oard_optim_steps(tr->opt);
    snprintf(steps, sizeof(steps), "%lld", done);
    snprintf(epoch, sizeof(epoch), "%lld", tr->epoch);
    snprintf(tcrc, sizeof(tcrc), "%08x", (unsigned)tr->train.crc);
    snprintf(vcrc, sizeof(vcrc), "%08x", (unsigned)tr->val.crc);
    snprintf(ntr, sizeof(ntr), "%d", tr->train.n);
    snprintf(nva, sizeof(nva), "%d", tr->val.n);
    if (tr->val.n) snprintf(vloss, sizeof(vloss), "%.9g", tr->val_loss);
    else snprintf(vloss, sizeof(vloss), "none");
    snprintf(cfg, sizeof(cfg), "batch=%d,lr=%.9g,betas=%.9g/%.9g,eps=%.9g,weight_decay=%.9g,amsgrad=%d,clip=%d,ema=%.9g,"
                               "swap=%d,seed=%llu,precision=%s",
             tr->batch, o->lr, o->beta1, o->beta2, o->eps, o->weight_decay, o->amsgrad, o->clip, o->ema_decay, tr->swap,
             (unsigned long long)tr->seed, OARD_REAL_NAME);
    if (tr->description) snprintf(desc, sizeof(desc), "%s", tr->description);
    else
        snprintf(desc, sizeof(desc), "trained with oa_reactdiff train: %lld steps of %d on %d reactions of %s%s", done, tr->batch,
                 tr->train.n, tr->data, tr->swap ? " (both directions)" : "");
    const char *meta[] = {"trained", "1", "description", desc, "train_steps", steps, "global_step", steps, "epoch", epoch,
                          "train_data", tr->data, "train_reactions", ntr, "train_split_crc32", tcrc, "val_reactions", nva,
                          "val_split_crc32", vcrc, "val_loss", vloss, "train_config", cfg, "train_init", tr->init_desc,
                          "train_program", "oa_reactdiff " OARD_VERSION " (" OARD_REAL_NAME ")", NULL};
    const real *w = oard_optim_ema(tr->opt) ? oard_optim_ema(tr->opt) : oard_param_data(tr->m);
    train_path(tr, "model.bin", path, sizeof(path));
    defer_signals(1);
    int rc = oard_model_save(tr->m, w, meta, sizeof(real) == 8, path, err);
    defer_signals(0);
    if (rc == OARD_ERR_ARG) rc = OARD_ERR_FORMAT; /* e.g. a --description the format cannot hold */
    return rc;
}

/* train's command line, checked before anything is read or allocated */
static int train_check_args(const Args *a, char *err) {
    if (a->npos) return fail(err, OARD_ERR_ARG, "train: unexpected argument '%s'", a->pos[0]);
    if (!a->train_out) return fail(err, OARD_ERR_ARG, "train needs --out DIR (checkpoint, logs, model.bin)");
    if (!a->resume && !a->init == !a->init_config)
        return fail(err, OARD_ERR_ARG, "train needs --init WEIGHTS or --init-config SPEC (one of them; or --resume)");
    if (a->description && (strchr(a->description, '\n') || strlen(a->description) > 511))
        return fail(err, OARD_ERR_ARG, "--description: one line of at most 511 bytes");
    if (!isnan(a->ema) && !(a->ema < 1)) return fail(err, OARD_ERR_ARG, "--ema: the decay must be below 1 (e.g. 0.999)");
    if (!isnan(a->lr) && !(a->lr > 0)) return fail(err, OARD_ERR_ARG, "--lr must be positive");
    if (a->objective && strcmp(a->objective, "bridge") && strcmp(a->objective, "diffusion"))
        return fail(err, OARD_ERR_ARG, "--objective: '%s' is not diffusion or bridge", a->objective);
    return OARD_OK;
}

/* The run's settings from the command line (a resumed run overrides them from its checkpoint
 * in train_start) and the description of its start: the weights file with its checksum
 * (header bytes 56..59; 0 if it cannot be read), or the --init-config spec and seed. */
static void trainer_from_args(Trainer *tr, const Args *a) {
    memset(tr, 0, sizeof(*tr));
    tr->a = a;
    tr->dir = a->train_out;
    tr->data = a->data ? a->data : "data";
    tr->batch = a->batch ? a->batch : 14; /* upstream's bz */
    tr->swap = !a->no_swap;
    tr->seed = a->seed;
    tr->val_loss = NAN;
    tr->val_step = -1;
    tr->steps = a->steps ? a->steps : 1000;
    tr->val_every = a->val_every ? a->val_every : 100;
    tr->ckpt_every = a->ckpt_every ? a->ckpt_every : tr->val_every;
    tr->description = a->description;
    if (a->init) {
        char cwd[2048] = "";
        unsigned char *h = NULL;
        size_t hn = 0;
        char e2[OARD_ERRLEN];
        if (a->init[0] != '/' && !getcwd(cwd, sizeof(cwd))) cwd[0] = 0;
        int got = read_binary_file(a->init, "weights file", WFILE_MAGIC, &h, &hn, e2) == OARD_OK; /* no FIFO wait */
        snprintf(tr->init_desc, sizeof(tr->init_desc), "weights %s%s%s (crc32 %08x)", cwd, cwd[0] ? "/" : "", a->init,
                 got ? (unsigned)rd_u32(h + 56) : 0u);
        free(h);
    } else if (a->init_config) {
        snprintf(tr->init_desc, sizeof(tr->init_desc), "config %s seed %llu", a->init_config, (unsigned long long)a->seed);
    }
}

/* The model and the optimizer of a resumed run, and what its command line leaves out: the
 * checkpoint's data, end, cadence and description. */
static int train_resume_model(Trainer *tr, const Args *a, const char *ckpath, char ***meta, char *err) {
    int rc = oard_checkpoint_load(ckpath, &tr->m, &tr->opt, meta, err);
    if (rc == OARD_ERR_FORMAT) return OARD_ERR_MODEL; /* an unusable checkpoint: as an unusable weights file */
    if (rc) return rc;
    const char *v;
    if (!a->data && (v = meta_of(*meta, "train.data"))) tr->data = v;
    if (!a->steps && (v = meta_of(*meta, "train.steps"))) tr->steps = atoi(v);
    if (!a->val_every && (v = meta_of(*meta, "train.val_every"))) tr->val_every = atoi(v);
    if (!a->ckpt_every && (v = meta_of(*meta, "train.checkpoint_every"))) tr->ckpt_every = atoi(v);
    if (!a->description && (v = meta_of(*meta, "train.description"))) tr->description = v;
    if (tr->steps < 1 || tr->val_every < 1 || tr->ckpt_every < 1)
        return fail(err, OARD_ERR_MODEL, "%s: malformed step counts", ckpath);
    return OARD_OK;
}

/* The model and a fresh optimizer of a new run: --init WEIGHTS or --init-config SPEC; with
 * --objective bridge from a diffusion model (or a fresh one), React-OT's fine-tuning start
 * with train_rpsb_ts1x.py's schedule (T 3000, beta_max 0.3, power 0.5). */
static int train_new_model(Trainer *tr, const Args *a, int want_bridge, char *err) {
    int rc;
    if (a->init) rc = load_weights(a->init, OARD_KIND_DENOISER, &tr->m, err);
    else {
        rc = oard_model_init(a->init_config, a->seed, &tr->m, err);
        if (rc == OARD_ERR_FORMAT || rc == OARD_ERR_MODEL) rc = OARD_ERR_ARG; /* the spec is at fault */
    }
    if (!rc && oard_model_config(tr->m)->kind == OARD_KIND_DENOISER && want_bridge &&
        oard_model_config(tr->m)->objective != OARD_OBJECTIVE_BRIDGE)
    {
        oard_model *b = NULL;
        rc = oard_model_to_bridge(tr->m, 3000, 0.3, 0.5, 1.0, &b, err);
        oard_model_free(tr->m);
        tr->m = b;
    }
    oard_optim_opts o;
    oard_optim_defaults(&o);
    if (!isnan(a->lr)) o.lr = a->lr;
    if (!isnan(a->weight_decay)) o.weight_decay = a->weight_decay;
    if (!isnan(a->ema)) o.ema_decay = a->ema;
    o.clip = !a->no_clip;
    if (!rc) rc = oard_optim_new(tr->m, 0, oard_param_data(tr->m), &o, &tr->opt, err);
    return rc;
}

/* The batch buffers of one training step */
typedef struct {
    int *items, *sizes, *t;
    real *xh[3]; /* the batch's R, TS, P (assemble_batch) */
    real *grad;  /* the loss's gradient, one entry per parameter */
} TrainStepBuf;

/* One step of training (upstream's training_step): the next B items of the epoch's order,
 * their t (diffusion: torch.randint(0, T + 1); bridge: randint(0, T)), the loss and its
 * gradient, one optimizer step. */
static int train_step(Trainer *tr, TrainStepBuf *sb, int threads, double *loss, oard_step_info *info, char *err) {
    const int B = tr->batch;
    for (int b = 0; b < B; b++) {
        if (tr->pos == tr->n_items) {
            tr->epoch++;
            tr->pos = 0;
            epoch_order(tr);
        }
        sb->items[b] = tr->perm[tr->pos++];
    }
    for (int b = 0; b < B; b++) sb->t[b] = (int)rng_below(&tr->rng_t, (uint64_t)tr->T + !tr->bridge);
    oard_batch batch = {B, sb->sizes, threads};
    int rc = assemble_batch(tr, &tr->train, sb->items, B, sb->sizes, sb->xh, err);
    if (!rc) rc = oard_train_loss(tr->m, &batch, (const real *const *)sb->xh, NULL, sb->t, &tr->rng_noise, loss, NULL, sb->grad, err);
    if (!rc) rc = oard_optim_step(tr->opt, oard_param_data(tr->m), sb->grad, info, err);
    return rc;
}

/* The run's state before its first step: the model and optimizer (train_resume_model or
 * train_new_model), checks that they suit the command line, the data, the resumed position
 * or fresh random streams, the epoch's order and the output directory. */
static int train_start(Trainer *tr, const Args *a, const char *ckpath, char ***meta, char *err) {
    const int want_bridge = a->objective && !strcmp(a->objective, "bridge");
    int have_ckpt = access(ckpath, F_OK) == 0;
    if (a->resume && !have_ckpt) return fail(err, OARD_ERR_IO, "%s: no checkpoint to resume from", ckpath);
    if (!a->resume && have_ckpt)
        return fail(err, OARD_ERR_ARG, "%s exists: add --resume to continue that run, or choose another --out", ckpath);
    int rc = a->resume ? train_resume_model(tr, a, ckpath, meta, err) : train_new_model(tr, a, want_bridge, err);
    if (rc) return rc;
    const oard_config *c = oard_model_config(tr->m);
    const char *from = a->resume ? ckpath : a->init;
    if (c->kind != OARD_KIND_DENOISER) return fail(err, OARD_ERR_MODEL, "%s: is a confidence model, a denoiser is needed", from);
    if (a->objective && (c->objective == OARD_OBJECTIVE_BRIDGE) != want_bridge)
        return fail(err, OARD_ERR_ARG, "--objective %s: %s is a %s model%s", a->objective, from,
                    c->objective == OARD_OBJECTIVE_BRIDGE ? "bridge" : "diffusion",
                    a->resume ? "" : " (a bridge model cannot go back to diffusion)");
    rc = read_dataset(tr->data, c, &tr->train, &tr->val, err);
    if (!rc && a->resume) rc = resume_checkpoint(tr, ckpath, *meta, err);
    if (rc) return rc;
    long long done = oard_optim_steps(tr->opt);
    if (done > tr->steps) return fail(err, OARD_ERR_ARG, "%s is at step %lld, beyond --steps %d", ckpath, done, tr->steps);
    tr->bridge = c->objective == OARD_OBJECTIVE_BRIDGE;
    tr->T = tr->bridge ? c->sb_timesteps : c->training_timesteps;
    tr->n_items = tr->train.n * (tr->swap ? 2 : 1);
    tr->perm = xcalloc((size_t)tr->n_items, sizeof(int));
    if (!tr->perm) return fail(err, OARD_ERR_NOMEM, "out of memory");
    if (!a->resume) {
        oard_rng_seed(&tr->rng_t, reaction_seed(tr->seed, "train:t"));
        oard_rng_seed(&tr->rng_noise, reaction_seed(tr->seed, "train:noise"));
    }
    epoch_order(tr);
    if (mkdir(tr->dir, 0777) != 0 && errno != EEXIST)
        return fail(err, OARD_ERR_IO, "%s: cannot create directory: %s", tr->dir, strerror(errno));
    return OARD_OK;
}

static int cmd_train(const Args *a, char *err) {
    int rc = train_check_args(a, err);
    if (rc) return rc;
    Trainer tr;
    trainer_from_args(&tr, a);
    char ckpath[4200], logpath[4200], valpath[4200];
    train_path(&tr, "checkpoint.bin", ckpath, sizeof(ckpath));
    train_path(&tr, "train.log", logpath, sizeof(logpath));
    train_path(&tr, "val.log", valpath, sizeof(valpath));
    char **meta = NULL;
    rc = train_start(&tr, a, ckpath, &meta, err);
    long long done = rc ? 0 : oard_optim_steps(tr.opt);
    const int steps = tr.steps, val_every = tr.val_every, ckpt_every = tr.ckpt_every;
    /* the logs: a fresh run starts them, a resumed one keeps the lines up to its checkpoint */
    if (!rc) rc = truncate_log(logpath, a->resume ? done : -1, "# step loss grad_norm clip_limit clipped lr seconds\n", err);
    if (!rc) rc = truncate_log(valpath, a->resume ? done : -1, "# step val_loss samples seconds\n", err);
    if (!rc && !a->resume) rc = write_checkpoint(&tr, err); /* step 0: a resume point from the start */
    FILE *tlog = NULL, *vlog = NULL;
    if (!rc) {
        tlog = append_open(logpath);
        vlog = append_open(valpath);
        if (!tlog || !vlog) rc = fail(err, OARD_ERR_IO, "%s: cannot write: %s", !tlog ? logpath : valpath, strerror(errno));
    }
    if (!rc)
        fprintf(stderr, "oa_reactdiff: training %s from step %lld to %d: %d train reactions%s, %d val, batch %d, %s%s\n", tr.dir,
                done, steps, tr.train.n, tr.swap ? " (both directions)" : "", tr.val.n, tr.batch,
                oard_model_config(tr.m)->trained ? "from a trained model" : "from untrained weights",
                oard_optim_ema(tr.opt) ? ", EMA" : "");
    const int B = tr.batch;
    TrainStepBuf sb = {xcalloc((size_t)B, sizeof(int)), xcalloc((size_t)B, sizeof(int)), xcalloc((size_t)B, sizeof(int)),
                       {NULL, NULL, NULL}, rc ? NULL : aligned_calloc(oard_param_size(tr.m), sizeof(real))};
    if (!rc && (!sb.items || !sb.sizes || !sb.t || !sb.grad)) rc = fail(err, OARD_ERR_NOMEM, "out of memory");
    struct timespec t0;
    for (long long step = done + 1; !rc && step <= steps; step++) {
        clock_gettime(CLOCK_MONOTONIC, &t0);
        double loss = 0;
        oard_step_info info;
        rc = train_step(&tr, &sb, a->threads, &loss, &info, err);
        if (rc) {
            char tmp[OARD_ERRLEN];
            snprintf(tmp, sizeof(tmp), "%s", err);
            fail(err, rc, "step %lld: %s (last checkpoint: %s)", step, tmp, ckpath);
            break;
        }
        double sec = seconds_since(&t0);
        tr.elapsed += sec;
        fprintf(tlog, "%lld %.9g %.9g %.9g %d %.9g %.3f\n", step, loss, info.grad_norm, info.clip_limit, info.clipped,
                oard_optim_options(tr.opt)->lr, sec);
        fflush(tlog);
        if ((step % val_every == 0 || step == steps) && tr.val.n) {
            clock_gettime(CLOCK_MONOTONIC, &t0);
            rc = validate(&tr, &tr.val_loss, err);
            if (rc) break;
            tr.val_step = step;
            fprintf(vlog, "%lld %.9g %d %.3f\n", step, tr.val_loss, tr.val.n * (tr.swap ? 2 : 1), seconds_since(&t0));
            fflush(vlog);
            fprintf(stderr, "oa_reactdiff: step %lld/%d  loss %.6g  val %.6g  (%.0f s)\n", step, steps, loss, tr.val_loss, tr.elapsed);
        }
        if (step % ckpt_every == 0 || step == steps) rc = write_checkpoint(&tr, err);
    }
    if (!rc && tr.val.n && tr.val_step != steps) { /* e.g. resumed at the end, before a validation at step N */
        rc = validate(&tr, &tr.val_loss, err);
        tr.val_step = steps;
    }
    if (!rc) rc = write_final_model(&tr, err);
    if (!rc) {
        char mp[4200];
        fprintf(stderr, "oa_reactdiff: wrote %s (%d steps%s, val loss %.6g)\n", train_path(&tr, "model.bin", mp, sizeof(mp)),
                steps, oard_optim_ema(tr.opt) ? ", EMA weights" : "", tr.val_loss);
    }
    if (tlog && fclose(tlog) != 0 && !rc) rc = fail(err, OARD_ERR_IO, "%s: write failed", logpath);
    if (vlog && fclose(vlog) != 0 && !rc) rc = fail(err, OARD_ERR_IO, "%s: write failed", valpath);
    for (int f = 0; f < 3; f++) free(sb.xh[f]);
    free(sb.items);
    free(sb.sizes);
    free(sb.t);
    free(tr.perm);
    aligned_free(sb.grad);
    split_free(&tr.train);
    split_free(&tr.val);
    oard_optim_free(tr.opt);
    oard_model_free(tr.m);
    free(meta);
    return rc;
}

/* ---- help ---- */
static const char *const HELP_MAIN =
    "oa_reactdiff %s - transition states of elementary reactions with OA-ReactDiff\n"
    "(Duan, Du, Jia, Kulik, Nat. Comput. Sci. 3, 1045 (2023))\n"
    "\n"
    "usage: oa_reactdiff COMMAND [options]   (oa_reactdiff COMMAND --help for details)\n"
    "  ts       TS candidates for a reactant and a product (or a list of reactions)\n"
    "  sample   whole reactions (reactant, TS, product) from atom types\n"
    "  rmsd     RMSD of two structures after superposition and atom matching\n"
    "  score    the recommender's confidence score of a TS\n"
    "  info     what a weights file holds\n"
    "  train    train a denoiser on a reaction dataset (checkpoints, resume)\n"
    "\n"
    "Weights: --weights FILE, else $OA_REACTDIFF_WEIGHTS, else weights.bin beside the binary\n"
    "(or PREFIX/share/oa_reactdiff/weights.bin after make install).\n"
    "Exit status: 0 ok, 1 file I/O, 2 usage, 3 bad input, 4 bad weights, 5 memory,\n"
    "6 NaN/Inf during sampling, 7 batch finished with failed reactions.\n";

static const struct {
    const char *cmd, *text;
} HELP[] = {
    {"ts",
     "usage: oa_reactdiff ts REACTANT.xyz PRODUCT.xyz [options]\n"
     "       oa_reactdiff ts --list FILE --outdir DIR [--shard I/N] [options]\n"
     "\n"
     "Generates N transition-state candidates by inpainting: the reactant and product are\n"
     "fixed and the TS is generated with RePaint resampling. Reactant and product need the\n"
     "same composition but not the same atom order (no atom mapping is needed). The TS is\n"
     "written in the reactant's atom order, centred on the reactant's centroid, as a\n"
     "multi-frame extended XYZ file with key=value metadata on each comment line.\n"
     "\n"
     "  -n N               candidates (default 1)\n"
     "  --seed S           random seed (default 42); same seed, same candidates\n"
     "  --steps T          denoising steps (default: the model's, 150)\n"
     "  --resamplings R    RePaint resamplings (default 5)\n"
     "  --jump J           RePaint jump length (default 5)\n"
     "  --weights FILE     denoiser weights (default: see oa_reactdiff --help)\n"
     "  --confidence FILE  score candidates with this confidence model, best first\n"
     "  --threads K        OpenMP threads (default: OMP_NUM_THREADS or all cores)\n"
     "  -o OUT.xyz         output file (default ts.xyz)\n"
     "\n"
     "Batch mode: FILE has one reaction per line, 'REACTANT.xyz PRODUCT.xyz [NAME]' ('#'\n"
     "comments; paths relative to FILE's directory; NAME defaults to the reactant's file\n"
     "name without .xyz). Each result is written atomically to DIR/NAME.xyz; reactions whose\n"
     "output exists are skipped, so an interrupted run is resumed by running it again.\n"
     "--shard I/N (0 <= I < N) takes the reactions with line index k, k mod N == I, e.g.\n"
     "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT. Each reaction's seed is derived\n"
     "from --seed and its NAME (recorded in the output), independent of the sharding.\n"},
    {"sample",
     "usage: oa_reactdiff sample --atoms ATOMS [options]\n"
     "\n"
     "Generates whole reactions (reactant, TS, product) for the given atoms and writes\n"
     "PREFIX_<i>_react.xyz, PREFIX_<i>_ts.xyz and PREFIX_<i>_prod.xyz for sample i.\n"
     "\n"
     "  --atoms ATOMS      e.g. C,N,O,H or C2H4O or C2,H4,O\n"
     "  -n N               reactions (default 1)\n"
     "  --seed S           random seed (default 42)\n"
     "  --steps T          denoising steps (default: the model's, 150)\n"
     "  --weights FILE     denoiser weights\n"
     "  --threads K        OpenMP threads\n"
     "  -o PREFIX          output prefix (default sample)\n"},
    {"rmsd",
     "usage: oa_reactdiff rmsd A.xyz B.xyz [--same-order] [--no-reflection] [--method M]\n"
     "\n"
     "Prints the RMSD (Angstrom) of A and B after optimal superposition (translation and\n"
     "rotation) and optimal matching of the atoms within each element; mirror images are\n"
     "allowed unless --no-reflection, as in the paper's evaluation. If A has several\n"
     "frames (e.g. the candidates in ts.xyz), one RMSD per frame, one per line.\n"
     "\n"
     "  --same-order       atom i of A is atom i of B (no matching)\n"
     "  --no-reflection    proper rotations only\n"
     "  --method M         auto (default): exhaustive over all element-preserving\n"
     "                     permutations when there are at most 10^4, else hungarian:\n"
     "                     optimal assignment per element alternated with superposition,\n"
     "                     from principal-axes and anchor-atom start rotations\n"},
    {"score",
     "usage: oa_reactdiff score REACTANT.xyz TS.xyz PRODUCT.xyz --confidence FILE\n"
     "\n"
     "Prints the recommender's confidence score (higher is better) of the TS for the\n"
     "reaction; the three structures need the same composition, in any atom order.\n"
     "\n"
     "  --confidence FILE  confidence model weights (kind confidence)\n"
     "  --threads K        OpenMP threads\n"},
    {"train",
     "usage: oa_reactdiff train --out DIR (--init WEIGHTS | --init-config SPEC) [options]\n"
     "       oa_reactdiff train --out DIR --resume [--steps N]\n"
     "\n"
     "Trains the denoiser with upstream's objective (l2 training loss), AdamW (AMSGrad)\n"
     "and upstream's adaptive gradient clipping. Each step takes a batch of training\n"
     "reactions from a seeded shuffle (every reaction also with reactant and product\n"
     "exchanged, as upstream), draws t uniformly in 0..T and updates the weights.\n"
     "DIR gets train.log (one line per step), val.log, checkpoint.bin (every\n"
     "--checkpoint-every steps and at the end) and model.bin (the trained weights).\n"
     "\n"
     "  --data DIR          dataset: DIR/index.tsv (columns id ... split) and\n"
     "                      DIR/reactions/<id>/{react,ts,prod}.xyz (default data)\n"
     "  --init WEIGHTS      start from this denoiser (architecture and weights)\n"
     "  --init-config SPEC  start from a fresh model, e.g. layers=4,hidden=64,radial=32,cutoff=10\n"
     "                      (upstream's defaults otherwise: 6 layers, 196 hidden, 96 radial)\n"
     "  --steps N           train until step N (default 1000)\n"
     "  --batch B           reactions per step (default 14, as upstream)\n"
     "  --lr X              learning rate (default 2.5e-4)\n"
     "  --weight-decay X    AdamW weight decay (default 0)\n"
     "  --ema D             keep an EMA of the weights with decay D (e.g. 0.999); it is\n"
     "                      used for validation and written as model.bin\n"
     "  --no-clip           no adaptive gradient clipping\n"
     "  --no-swap           do not add the reactions with reactant and product exchanged\n"
     "  --seed S            data order, t, noise and the fresh model (default 42)\n"
     "  --val-every K       validation loss on the val split every K steps (default 100)\n"
     "  --checkpoint-every C  checkpoint every C steps (default: K)\n"
     "  --threads K         OpenMP threads\n"
     "  --description TEXT  description written into model.bin\n"
     "  --resume            continue the run in DIR from its checkpoint; options given\n"
     "                      again must equal the checkpoint's, --steps sets the new end\n"
     "\n"
     "A run of 2N steps and a run of N steps resumed to 2N give the same model.bin, byte\n"
     "for byte. Ctrl-C or SIGTERM leaves the last checkpoint intact.\n"},
    {"info",
     "usage: oa_reactdiff info WEIGHTS\n"
     "\n"
     "Checks the file (format, checksum, tensors) and prints its kind, hyperparameters,\n"
     "parameter count and provenance.\n"},
};

static void print_help(FILE *f, const char *cmd) {
    for (size_t k = 0; cmd && k < sizeof(HELP) / sizeof(HELP[0]); k++)
        if (!strcmp(cmd, HELP[k].cmd)) {
            fputs(HELP[k].text, f);
            return;
        }
    fprintf(f, HELP_MAIN, oard_version());
}

int main(int argc, char **argv) {
    char err[OARD_ERRLEN] = "";
    if (argc < 2) {
        print_help(stderr, NULL);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        print_help(stdout, argc > 2 && !strcmp(cmd, "help") ? argv[2] : NULL);
        return 0;
    }
    if (!strcmp(cmd, "--version")) {
        printf("oa_reactdiff %s, kernels %s\n", oard_version(), oard_kernel_path());
        return 0;
    }
    const char *isa = getenv("OARD_ISA");
    if (isa && *isa && strcmp(isa, oard_kernel_path()) != 0) {
        fprintf(stderr, "oa_reactdiff: OARD_ISA=%s: not a kernel path of this build and CPU (generic, avx2, avx512 as the CPU allows; "
                        "this build and CPU: %s at best)\n", isa, oard_kernel_path());
        return EXIT_USAGE;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
    Args a;
    memset(&a, 0, sizeof(a));
    a.seed = 42; a.n = 1; a.resamplings = 5; a.jump = 5; a.shard_n = 1;
    a.lr = a.weight_decay = a.ema = NAN;
    int rc;
    static const char *const commands[] = {"ts", "sample", "rmsd", "score", "info", "train"};
    int known = 0;
    for (size_t k = 0; k < sizeof(commands) / sizeof(commands[0]); k++) known |= !strcmp(cmd, commands[k]);
    if (!known) rc = fail(err, OARD_ERR_ARG, "unknown command '%s' (ts, sample, rmsd, score, info, train; --help)", cmd);
    else rc = parse_args(cmd, argc, argv, &a, err);
    if (!rc && a.help) {
        print_help(stdout, cmd);
        return 0;
    }
    if (!rc) {
        if (!strcmp(cmd, "ts")) rc = cmd_ts(&a, err);
        else if (!strcmp(cmd, "sample")) rc = cmd_sample(&a, err);
        else if (!strcmp(cmd, "rmsd")) rc = cmd_rmsd(&a, err);
        else if (!strcmp(cmd, "score")) rc = cmd_score(&a, err);
        else if (!strcmp(cmd, "train")) rc = cmd_train(&a, err);
        else rc = cmd_info(&a, err);
    }
    if (rc == -EXIT_BATCH) {
        fprintf(stderr, "oa_reactdiff: %s\n", err);
        return EXIT_BATCH;
    }
    if (rc) {
        fprintf(stderr, "oa_reactdiff: %s\n", err);
        return exit_status(rc);
    }
    return 0;
}
#endif

/* ------------------------------------------------------------------------------------ */
/* Structure comparison: RMSD after optimal superposition and atom matching                */
/*
 * The paper's evaluation (upstream analyze/rmsd.py, pymatgen matchers) compares a generated
 * TS with the reference after removing translation, rotation, optionally reflection, and
 * the order of atoms of the same element. Here:
 *   - superposition: Horn's closed-form quaternion solution (J. Opt. Soc. Am. A 4, 629
 *     (1987)), the proper rotation minimising sum |R a_i - b_i|^2 for centred a, b;
 *     a reflection is handled by mirroring b (z -> -z) and keeping the better result;
 *   - matching: if the number of element-preserving permutations is at most
 *     RMSD_BRUTE_LIMIT, every one of them is superposed (the global optimum, exactly as
 *     upstream's BruteForceOrderMatcher); otherwise the optimal assignment for a given
 *     rotation is solved exactly per element by the Hungarian method and alternated with
 *     the superposition until the RMSD stops decreasing, from several start rotations
 *     (principal axes and pairs of anchor atoms). For a structure and a rotated, translated,
 *     permuted or mirrored copy of it an anchor start is the true rotation, so the result
 *     is zero to rounding.
 */
#define RMSD_BRUTE_LIMIT 10000.0
#define RMSD_MAX_ANCHORS 64 /* start rotations per anchor atom */
#define RMSD_ANCHOR_ATOMS 4

/* Cyclic Jacobi eigen-decomposition of a symmetric n x n matrix (n <= 4 here): A is
 * destroyed; w receives the eigenvalues, column j of V the eigenvector of w[j]. */
static void sym_eigen(int n, double *A, double *V, double *w) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) V[i * n + j] = i == j;
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0, diag = 0;
        for (int i = 0; i < n; i++) {
            diag += A[i * n + i] * A[i * n + i];
            for (int j = i + 1; j < n; j++) off += A[i * n + j] * A[i * n + j];
        }
        if (off <= 1e-30 * diag || off == 0) break;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) {
                double apq = A[p * n + q];
                if (apq == 0) continue;
                double theta = (A[q * n + q] - A[p * n + p]) / (2 * apq);
                double t = (theta >= 0 ? 1 : -1) / (fabs(theta) + sqrt(theta * theta + 1));
                double cs = 1 / sqrt(t * t + 1), sn = t * cs;
                for (int k = 0; k < n; k++) { /* A <- J^T A J */
                    double akp = A[k * n + p], akq = A[k * n + q];
                    A[k * n + p] = cs * akp - sn * akq;
                    A[k * n + q] = sn * akp + cs * akq;
                }
                for (int k = 0; k < n; k++) {
                    double apk = A[p * n + k], aqk = A[q * n + k];
                    A[p * n + k] = cs * apk - sn * aqk;
                    A[q * n + k] = sn * apk + cs * aqk;
                }
                for (int k = 0; k < n; k++) {
                    double vkp = V[k * n + p], vkq = V[k * n + q];
                    V[k * n + p] = cs * vkp - sn * vkq;
                    V[k * n + q] = sn * vkp + cs * vkq;
                }
            }
    }
    for (int i = 0; i < n; i++) w[i] = A[i * n + i];
}

/* Horn's method: the proper rotation R (row-major 3x3) minimising sum |R a_i - b_map(i)|^2
 * over centred coordinates; map NULL means the identity. */
static void superpose_rotation(int n, const double *a, const double *b, const int *map, double R[9]) {
    double S[9] = {0}; /* S[3i+j] = sum a_i b_j */
    for (int k = 0; k < n; k++) {
        const double *pa = a + 3 * k, *pb = b + 3 * (map ? map[k] : k);
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++) S[3 * i + j] += pa[i] * pb[j];
    }
    double xx = S[0], xy = S[1], xz = S[2], yx = S[3], yy = S[4], yz = S[5], zx = S[6], zy = S[7], zz = S[8];
    double N[16] = {xx + yy + zz, yz - zy,      zx - xz,       xy - yx,
                    yz - zy,      xx - yy - zz, xy + yx,       zx + xz,
                    zx - xz,      xy + yx,      -xx + yy - zz, yz + zy,
                    xy - yx,      zx + xz,      yz + zy,       -xx - yy + zz};
    double V[16], w[4];
    sym_eigen(4, N, V, w);
    int best = 0;
    for (int j = 1; j < 4; j++)
        if (w[j] > w[best]) best = j;
    double q0 = V[0 * 4 + best], q1 = V[1 * 4 + best], q2 = V[2 * 4 + best], q3 = V[3 * 4 + best];
    double qn = sqrt(q0 * q0 + q1 * q1 + q2 * q2 + q3 * q3);
    q0 /= qn; q1 /= qn; q2 /= qn; q3 /= qn;
    R[0] = q0 * q0 + q1 * q1 - q2 * q2 - q3 * q3; R[1] = 2 * (q1 * q2 - q0 * q3); R[2] = 2 * (q1 * q3 + q0 * q2);
    R[3] = 2 * (q1 * q2 + q0 * q3); R[4] = q0 * q0 - q1 * q1 + q2 * q2 - q3 * q3; R[5] = 2 * (q2 * q3 - q0 * q1);
    R[6] = 2 * (q1 * q3 - q0 * q2); R[7] = 2 * (q2 * q3 + q0 * q1); R[8] = q0 * q0 - q1 * q1 - q2 * q2 + q3 * q3;
}

/* sqrt(mean |R a_i - b_map(i)|^2), computed from the coordinates (not from the eigenvalue,
 * which loses all digits of a small RMSD to cancellation) */
static double rotated_rmsd(int n, const double *a, const double *b, const int *map, const double R[9]) {
    double s = 0;
    for (int k = 0; k < n; k++) {
        const double *pa = a + 3 * k, *pb = b + 3 * (map ? map[k] : k);
        for (int i = 0; i < 3; i++) {
            double d = R[3 * i] * pa[0] + R[3 * i + 1] * pa[1] + R[3 * i + 2] * pa[2] - pb[i];
            s += d * d;
        }
    }
    return sqrt(s / n);
}

static double superposed_rmsd(int n, const double *a, const double *b, const int *map) {
    double R[9];
    superpose_rotation(n, a, b, map, R);
    return rotated_rmsd(n, a, b, map, R);
}

/* Optimal assignment (Hungarian method with potentials, O(n^3)): row i of the n x n cost
 * matrix is assigned column col[i], minimising the total cost. */
static int hungarian(int n, const double *cost, int *col) {
    double *u = calloc((size_t)n + 1, sizeof(double)), *v = calloc((size_t)n + 1, sizeof(double));
    double *minv = malloc(((size_t)n + 1) * sizeof(double));
    int *p = calloc((size_t)n + 1, sizeof(int)), *way = calloc((size_t)n + 1, sizeof(int));
    char *used = malloc((size_t)n + 1);
    int ok = u && v && minv && p && way && used;
    for (int i = 1; ok && i <= n; i++) { /* add row i; p[j] is the row on column j (1-based) */
        p[0] = i;
        int j0 = 0;
        for (int j = 0; j <= n; j++) { minv[j] = INFINITY; used[j] = 0; }
        do {
            used[j0] = 1;
            int i0 = p[j0], j1 = 0;
            double delta = INFINITY;
            for (int j = 1; j <= n; j++)
                if (!used[j]) {
                    double cur = cost[(size_t)(i0 - 1) * n + (j - 1)] - u[i0] - v[j];
                    if (cur < minv[j]) { minv[j] = cur; way[j] = j0; }
                    if (minv[j] < delta) { delta = minv[j]; j1 = j; }
                }
            if (j1 == 0) { /* no finite cost left (NaN/Inf input): give up, never loop */
                ok = 0;
                break;
            }
            for (int j = 0; j <= n; j++)
                if (used[j]) { u[p[j]] += delta; v[j] -= delta; }
                else minv[j] -= delta;
            j0 = j1;
        } while (p[j0] != 0);
        if (!ok) break;
        do { /* augment along the path */
            int j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
        } while (j0);
    }
    for (int j = 1; ok && j <= n; j++) col[p[j] - 1] = j - 1;
    int alloc_ok = u && v && minv && p && way && used;
    free(u); free(v); free(minv); free(p); free(way); free(used);
    return ok ? OARD_OK : alloc_ok ? OARD_ERR_NUMERIC : OARD_ERR_NOMEM;
}

typedef struct {
    int n, ngroups;
    const int *ea, *eb;
    const double *a, *b; /* centred */
    int *ga, *gb;        /* atoms of each element group: group g holds goff[g]..goff[g+1] */
    int *goff;
    double *cost;
    int *col;
} Matcher;

/* Given rotation R, the best element-preserving map of A's atoms onto B's (exact per
 * element), then alternate with the superposition while the RMSD decreases. */
static int match_from_rotation(Matcher *M, double R[9], int *map, double *best) {
    double prev = INFINITY;
    int *trial = malloc((size_t)M->n * sizeof(int));
    if (!trial) return OARD_ERR_NOMEM;
    *best = INFINITY;
    for (int iter = 0; iter < 100; iter++) {
        for (int g = 0; g < M->ngroups; g++) {
            int lo = M->goff[g], m = M->goff[g + 1] - lo;
            for (int i = 0; i < m; i++) {
                const double *pa = M->a + 3 * M->ga[lo + i];
                double ra[3];
                for (int k = 0; k < 3; k++) ra[k] = R[3 * k] * pa[0] + R[3 * k + 1] * pa[1] + R[3 * k + 2] * pa[2];
                for (int j = 0; j < m; j++) {
                    const double *pb = M->b + 3 * M->gb[lo + j];
                    double d0 = ra[0] - pb[0], d1 = ra[1] - pb[1], d2 = ra[2] - pb[2];
                    M->cost[(size_t)i * m + j] = d0 * d0 + d1 * d1 + d2 * d2;
                }
            }
            int hr = hungarian(m, M->cost, M->col);
            if (hr) {
                free(trial);
                return hr;
            }
            for (int i = 0; i < m; i++) trial[M->ga[lo + i]] = M->gb[lo + M->col[i]];
        }
        superpose_rotation(M->n, M->a, M->b, trial, R);
        double r = rotated_rmsd(M->n, M->a, M->b, trial, R);
        if (r < *best) { *best = r; memcpy(map, trial, (size_t)M->n * sizeof(int)); }
        if (!(r < prev - 1e-12 * (1 + prev))) break;
        prev = r;
    }
    free(trial);
    return OARD_OK;
}

/* orthonormal frame (rows e1, e2, e3) from two vectors; 0 if they are (nearly) parallel */
static int frame_from_pair(const double *u, const double *v, double F[9]) {
    double nu = sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2]);
    if (nu < 1e-8) return 0;
    for (int k = 0; k < 3; k++) F[k] = u[k] / nu;
    double d = F[0] * v[0] + F[1] * v[1] + F[2] * v[2], w[3], nw;
    for (int k = 0; k < 3; k++) w[k] = v[k] - d * F[k];
    nw = sqrt(w[0] * w[0] + w[1] * w[1] + w[2] * w[2]);
    if (nw < 1e-6 * (1 + sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]))) return 0;
    for (int k = 0; k < 3; k++) F[3 + k] = w[k] / nw;
    F[6] = F[1] * F[5] - F[2] * F[4]; F[7] = F[2] * F[3] - F[0] * F[5]; F[8] = F[0] * F[4] - F[1] * F[3];
    return 1;
}

static double dnorm3(const double *x) { return sqrt(x[0] * x[0] + x[1] * x[1] + x[2] * x[2]); }

/* Principal axes of the centred coordinates (unit weights): rows of P */
static void principal_axes(int n, const double *x, double P[9]) {
    double C[9] = {0}, V[9], w[3];
    for (int k = 0; k < n; k++)
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++) C[3 * i + j] += x[3 * k + i] * x[3 * k + j];
    sym_eigen(3, C, V, w);
    int o[3] = {0, 1, 2}; /* ascending eigenvalues */
    for (int i = 0; i < 3; i++)
        for (int j = i + 1; j < 3; j++)
            if (w[o[j]] < w[o[i]]) { int t = o[i]; o[i] = o[j]; o[j] = t; }
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < 3; k++) P[3 * i + k] = V[3 * k + o[i]];
}

/* R = Fb^T Fa: maps frame Fa onto frame Fb */
static void rotation_between(const double Fa[9], const double Fb[9], double R[9]) {
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) R[3 * i + j] = Fb[i] * Fa[j] + Fb[3 + i] * Fa[3 + j] + Fb[6 + i] * Fa[6 + j];
}

typedef struct {
    double key;
    int b1, b2;
} AnchorPair;

static int cmp_anchor(const void *x, const void *y) {
    double a = ((const AnchorPair *)x)->key, b = ((const AnchorPair *)y)->key;
    return a < b ? -1 : a > b;
}

/* Hungarian search from several starts; best RMSD over them */
static int match_search(Matcher *M, double *best) {
    int n = M->n, rc = OARD_OK;
    int *map = malloc((size_t)n * sizeof(int));
    AnchorPair *pairs = NULL;
    if (!map) return OARD_ERR_NOMEM;
    *best = INFINITY;
    double R[9], r;
    /* starts 1-4: principal axes with the four proper sign choices */
    double Pa[9], Pb[9];
    principal_axes(n, M->a, Pa);
    principal_axes(n, M->b, Pb);
    for (int s = 0; s < 4 && !rc; s++) {
        double sg[3] = {(s & 1) ? -1 : 1, (s & 2) ? -1 : 1, 1}, Fa[9];
        double det = Pa[0] * (Pa[4] * Pa[8] - Pa[5] * Pa[7]) - Pa[1] * (Pa[3] * Pa[8] - Pa[5] * Pa[6]) +
                     Pa[2] * (Pa[3] * Pa[7] - Pa[4] * Pa[6]);
        double detb = Pb[0] * (Pb[4] * Pb[8] - Pb[5] * Pb[7]) - Pb[1] * (Pb[3] * Pb[8] - Pb[5] * Pb[6]) +
                      Pb[2] * (Pb[3] * Pb[7] - Pb[4] * Pb[6]);
        sg[2] = sg[0] * sg[1] * (det * detb > 0 ? 1 : -1); /* keep R proper */
        for (int i = 0; i < 3; i++)
            for (int k = 0; k < 3; k++) Fa[3 * i + k] = sg[i] * Pa[3 * i + k];
        rotation_between(Fa, Pb, R);
        rc = match_from_rotation(M, R, map, &r);
        if (r < *best) *best = r;
    }
    /* anchor starts: for each of RMSD_ANCHOR_ATOMS atoms a1 of A (the farthest from the
     * centre, rarest elements first) and the atom a2 least parallel to it, every
     * same-element pair (b1, b2) of B, closest in distances and angle first */
    int *cand = malloc((size_t)n * sizeof(int));
    pairs = malloc((size_t)n * n * sizeof(AnchorPair));
    if (!rc && (!cand || !pairs)) rc = OARD_ERR_NOMEM;
    int *gs = cand ? malloc((size_t)n * sizeof(int)) : NULL; /* size of each atom's element group */
    if (!rc && !gs) rc = OARD_ERR_NOMEM;
    for (int g = 0; !rc && g < M->ngroups; g++)
        for (int k = M->goff[g]; k < M->goff[g + 1]; k++) gs[M->ga[k]] = M->goff[g + 1] - M->goff[g];
    for (int i = 0; !rc && i < n; i++) { /* insertion sort: rarer element first, then farther out */
        int j = i;
        for (; j > 0; j--) {
            int x = cand[j - 1];
            if (gs[x] < gs[i] || (gs[x] == gs[i] && dnorm3(M->a + 3 * x) >= dnorm3(M->a + 3 * i))) break;
            cand[j] = x;
        }
        cand[j] = i;
    }
    free(gs);
    for (int c = 0; !rc && c < n && c < RMSD_ANCHOR_ATOMS; c++) {
        int a1 = cand[c], a2 = -1;
        double bestx = 0, Fa[9];
        for (int i = 0; i < n; i++) {
            const double *u = M->a + 3 * a1, *v = M->a + 3 * i;
            double cr[3] = {u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]};
            if (dnorm3(cr) > bestx) { bestx = dnorm3(cr); a2 = i; }
        }
        if (a2 < 0 || !frame_from_pair(M->a + 3 * a1, M->a + 3 * a2, Fa)) continue;
        int np = 0;
        double ra1 = dnorm3(M->a + 3 * a1), ra2 = dnorm3(M->a + 3 * a2), dot_a = 0;
        for (int k = 0; k < 3; k++) dot_a += M->a[3 * a1 + k] * M->a[3 * a2 + k];
        for (int b1 = 0; b1 < n; b1++) {
            if (M->eb[b1] != M->ea[a1]) continue;
            for (int b2 = 0; b2 < n; b2++) {
                if (b2 == b1 || M->eb[b2] != M->ea[a2]) continue;
                double dot_b = 0;
                for (int k = 0; k < 3; k++) dot_b += M->b[3 * b1 + k] * M->b[3 * b2 + k];
                pairs[np].key = fabs(dnorm3(M->b + 3 * b1) - ra1) + fabs(dnorm3(M->b + 3 * b2) - ra2) +
                                fabs(dot_b - dot_a) / (1 + ra1 * ra2);
                pairs[np].b1 = b1; pairs[np].b2 = b2; np++;
            }
        }
        qsort(pairs, (size_t)np, sizeof(*pairs), cmp_anchor);
        for (int k = 0; !rc && k < np && k < RMSD_MAX_ANCHORS; k++) {
            double Fb[9];
            if (!frame_from_pair(M->b + 3 * pairs[k].b1, M->b + 3 * pairs[k].b2, Fb)) continue;
            rotation_between(Fa, Fb, R);
            rc = match_from_rotation(M, R, map, &r);
            if (r < *best) *best = r;
        }
    }
    free(cand);
    free(pairs);
    free(map);
    return rc;
}

/* every element-preserving permutation (depth-first), superposed */
static void match_brute(Matcher *M, int depth, int *map, char *taken, double *best) {
    if (depth == M->n) {
        double r = superposed_rmsd(M->n, M->a, M->b, map);
        if (r < *best) *best = r;
        return;
    }
    for (int j = 0; j < M->n; j++)
        if (!taken[j] && M->eb[j] == M->ea[depth]) {
            taken[j] = 1; map[depth] = j;
            match_brute(M, depth + 1, map, taken, best);
            taken[j] = 0;
        }
}

/* idx <- 0..n-1 ordered by element, then index (insertion sort: stable, no globals) */
static void sort_by_elem(int n, const int *e, int *idx) {
    for (int i = 0; i < n; i++) {
        int j = i;
        while (j > 0 && e[idx[j - 1]] > e[i]) { idx[j] = idx[j - 1]; j--; }
        idx[j] = i;
    }
}

/* one handedness: b as given, everything centred already */
static int rmsd_one(int n, const int *ea, const double *a, const int *eb, const double *b, int flags,
                    double *out, char *err) {
    if (flags & OARD_RMSD_SAME_ORDER) {
        *out = superposed_rmsd(n, a, b, NULL);
        return OARD_OK;
    }
    Matcher M;
    memset(&M, 0, sizeof(M));
    M.n = n; M.ea = ea; M.eb = eb; M.a = a; M.b = b;
    M.ga = malloc((size_t)n * sizeof(int)); M.gb = malloc((size_t)n * sizeof(int));
    M.goff = malloc(((size_t)n + 1) * sizeof(int));
    M.cost = malloc((size_t)n * n * sizeof(double));
    M.col = malloc((size_t)n * sizeof(int));
    int *map = malloc((size_t)n * sizeof(int));
    char *taken = calloc((size_t)n, 1);
    int rc = (M.ga && M.gb && M.goff && M.cost && M.col && map && taken) ? OARD_OK
                                                                         : fail(err, OARD_ERR_NOMEM, "rmsd: out of memory");
    if (!rc) {
        sort_by_elem(n, ea, M.ga);
        sort_by_elem(n, eb, M.gb);
        double perms = 1;
        for (int i = 0; i < n; i++) {
            if (i == 0 || ea[M.ga[i]] != ea[M.ga[i - 1]]) M.goff[M.ngroups++] = i;
            perms *= i - M.goff[M.ngroups - 1] + 1; /* product of the group sizes' factorials */
        }
        M.goff[M.ngroups] = n;
        int brute = (flags & OARD_RMSD_BRUTE) || (!(flags & OARD_RMSD_HUNGARIAN) && perms <= RMSD_BRUTE_LIMIT);
        if (brute && perms > 1e8)
            rc = fail(err, OARD_ERR_ARG, "rmsd: %.3g permutations are too many to enumerate", perms);
        *out = INFINITY;
        if (!rc && brute) match_brute(&M, 0, map, taken, out);
        else if (!rc && (rc = match_search(&M, out)) != OARD_OK)
            rc = fail(err, rc, rc == OARD_ERR_NOMEM ? "rmsd: out of memory" : "rmsd: non-finite distances");
    }
    free(M.ga); free(M.gb); free(M.goff); free(M.cost); free(M.col); free(map); free(taken);
    return rc;
}

int oard_rmsd(int n, const int *elem_a, const double *xyz_a, const int *elem_b, const double *xyz_b, int flags,
              double *rmsd, char *err) {
    if (n < 1) return fail(err, OARD_ERR_ARG, "rmsd: no atoms");
    for (int i = 0; i < 3 * n; i++) /* beyond 1e6 squared distances could overflow */
        if (!(fabs(xyz_a[i]) <= 1e6) || !(fabs(xyz_b[i]) <= 1e6))
            return fail(err, OARD_ERR_ARG, "rmsd: coordinates must be finite and within 1e6 of the origin");
    if (flags & OARD_RMSD_SAME_ORDER) {
        for (int i = 0; i < n; i++)
            if (elem_a[i] != elem_b[i])
                return fail(err, OARD_ERR_ARG, "rmsd: atom %d differs in element between the structures (same order requested)", i + 1);
    } else {
        int *sa = malloc((size_t)n * sizeof(int)), *sb = malloc((size_t)n * sizeof(int)), bad = 0;
        if (!sa || !sb) {
            free(sa); free(sb);
            return fail(err, OARD_ERR_NOMEM, "rmsd: out of memory");
        }
        sort_by_elem(n, elem_a, sa);
        sort_by_elem(n, elem_b, sb);
        for (int i = 0; i < n; i++) bad |= elem_a[sa[i]] != elem_b[sb[i]];
        free(sa); free(sb);
        if (bad) return fail(err, OARD_ERR_ARG, "rmsd: the structures differ in composition");
    }
    double *a = malloc((size_t)n * 3 * sizeof(double)), *b = malloc((size_t)n * 3 * sizeof(double));
    if (!a || !b) {
        free(a); free(b);
        return fail(err, OARD_ERR_NOMEM, "rmsd: out of memory");
    }
    double ca[3] = {0, 0, 0}, cb[3] = {0, 0, 0};
    for (int i = 0; i < n; i++)
        for (int k = 0; k < 3; k++) { ca[k] += xyz_a[3 * i + k] / n; cb[k] += xyz_b[3 * i + k] / n; }
    for (int i = 0; i < n; i++)
        for (int k = 0; k < 3; k++) { a[3 * i + k] = xyz_a[3 * i + k] - ca[k]; b[3 * i + k] = xyz_b[3 * i + k] - cb[k]; }
    double r1 = INFINITY, r2 = INFINITY;
    int rc = rmsd_one(n, elem_a, a, elem_b, b, flags, &r1, err);
    if (!rc && !(flags & OARD_RMSD_NO_REFLECTION)) {
        for (int i = 0; i < n; i++) b[3 * i + 2] = -b[3 * i + 2];
        rc = rmsd_one(n, elem_a, a, elem_b, b, flags, &r2, err);
    }
    free(a); free(b);
    if (!rc) *rmsd = r1 < r2 ? r1 : r2;
    return rc;
}
