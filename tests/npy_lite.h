/*
 * npy_lite.h - a minimal .npy reader for the unit tests (tests/test_*.c).
 *
 * Reads NumPy format v1.0/v2.0 files, little-endian, C order, dtype <f4, <f8 or <i8, and
 * converts every element to double (exact for <f4 and <f8, and for <i8 up to 2^53).
 * Anything else is refused with a message naming the file. Header-only, static functions.
 * (tests/golden_runner.c has its own, fuller reader; this one is deliberately small.)
 */
#ifndef NPY_LITE_H
#define NPY_LITE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NPYL_MAX_DIM 8

typedef struct {
    char descr[8];  /* "<f4", "<f8" or "<i8" */
    int ndim;
    long long shape[NPYL_MAX_DIM];
    size_t size;    /* number of elements */
    double *data;   /* size values */
} npyl_array;

static void npyl_free(npyl_array *a)
{
    free(a->data);
    a->data = NULL;
}

/* Returns 0, or -1 with a one-line message (naming path) in err[errlen]. */
static int npyl_load(const char *path, npyl_array *a, char *err, size_t errlen)
{
    memset(a, 0, sizeof *a);
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open", path);
        return -1;
    }
    unsigned char pre[12];
    char *hdr = NULL;
    unsigned char *raw = NULL;
    size_t hlen;
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0) {
        snprintf(err, errlen, "%s: not a .npy file", path);
        goto fail;
    }
    if (pre[6] == 1) {
        hlen = (size_t)pre[8] | (size_t)pre[9] << 8;
    } else if (pre[6] == 2 && fread(pre + 10, 1, 2, f) == 2) {
        hlen = (size_t)pre[8] | (size_t)pre[9] << 8 | (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
    } else {
        snprintf(err, errlen, "%s: unsupported .npy version", path);
        goto fail;
    }
    if (hlen == 0 || hlen > 65536 || !(hdr = calloc(hlen + 1, 1)) || fread(hdr, 1, hlen, f) != hlen) {
        snprintf(err, errlen, "%s: bad .npy header", path);
        goto fail;
    }
    const char *p = strstr(hdr, "'descr':");
    if (!p || sscanf(p + 8, " '%7[^']'", a->descr) != 1) {
        snprintf(err, errlen, "%s: no descr in header", path);
        goto fail;
    }
    int itemsize = strcmp(a->descr, "<f4") == 0 ? 4 : (strcmp(a->descr, "<f8") == 0 || strcmp(a->descr, "<i8") == 0) ? 8 : 0;
    if (!itemsize) {
        snprintf(err, errlen, "%s: dtype %s not supported", path, a->descr);
        goto fail;
    }
    p = strstr(hdr, "'fortran_order':");
    if (!p || strncmp(p + 16 + strspn(p + 16, " "), "False", 5) != 0) {
        snprintf(err, errlen, "%s: not C order", path);
        goto fail;
    }
    p = strstr(hdr, "'shape':");
    if (!p || !(p = strchr(p, '('))) {
        snprintf(err, errlen, "%s: no shape in header", path);
        goto fail;
    }
    p++;
    a->size = 1;
    for (;;) {
        while (*p == ' ' || *p == ',') p++;
        if (*p == ')') break;
        char *end;
        long long d = strtoll(p, &end, 10);
        if (end == p || d < 0 || a->ndim == NPYL_MAX_DIM) {
            snprintf(err, errlen, "%s: bad shape in header", path);
            goto fail;
        }
        a->shape[a->ndim++] = d;
        a->size *= (size_t)d;
        p = end;
    }
    raw = malloc(a->size * (size_t)itemsize + 1);
    a->data = malloc((a->size ? a->size : 1) * sizeof(double));
    if (!raw || !a->data || fread(raw, (size_t)itemsize, a->size, f) != a->size || fgetc(f) != EOF) {
        snprintf(err, errlen, "%s: data size does not match the header", path);
        goto fail;
    }
    for (size_t i = 0; i < a->size; i++) { /* the host is little-endian (checked by the callers) */
        const unsigned char *q = raw + i * (size_t)itemsize;
        if (a->descr[1] == 'f' && itemsize == 4) {
            float v;
            memcpy(&v, q, 4);
            a->data[i] = v;
        } else if (a->descr[1] == 'f') {
            memcpy(&a->data[i], q, 8);
        } else {
            int64_t v;
            memcpy(&v, q, 8);
            a->data[i] = (double)v;
        }
    }
    free(raw);
    free(hdr);
    fclose(f);
    return 0;
fail:
    free(raw);
    free(hdr);
    npyl_free(a);
    fclose(f);
    return -1;
}

static int npyl_host_is_little_endian(void)
{
    const uint32_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

#endif
