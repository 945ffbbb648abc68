/* fuzz_xyz.c - the xyz reader (read_xyz_stream: one or many frames) and the --atoms parser. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[OARD_ERRLEN];
    FILE *f = fuzz_stream(data, size);
    if (!f) return 0;
    Molecule *fr = NULL;
    int n = 0;
    if (read_xyz_stream(f, "fuzz.xyz", &fr, &n, err) == OARD_OK) {
        for (int i = 0; i < n; i++) { /* what the commands do next with a structure */
            Molecule *m = &fr[i];
            if (m->n < 1 || !m->z || !m->xyz) abort();
            int *perm = malloc((size_t)m->n * sizeof(int));
            if (canonical_order(m, perm)) abort();
            for (int k = 0; k < m->n; k++) /* a permutation */
                if (perm[k] < 0 || perm[k] >= m->n) abort();
            if (m->n <= 16) {
                double r; /* the value is not checked: only crashes, hangs and sanitizer reports matter */
                (void)oard_rmsd(m->n, m->z, m->xyz, m->z, m->xyz, 0, &r, err);
            }
            free(perm);
            mol_free(m);
        }
        free(fr);
    } else if (fr || n) {
        abort(); /* an error must leave nothing behind */
    }
    fclose(f);
    /* the same bytes as an --atoms argument */
    char *s = malloc(size + 1);
    memcpy(s, data, size);
    s[size] = 0;
    Molecule m;
    if (parse_atoms(s, &m, err) == OARD_OK) mol_free(&m);
    free(s);
    return 0;
}
