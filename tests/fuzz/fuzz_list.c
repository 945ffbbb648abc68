/* fuzz_list.c - the reaction-list reader of ts --list (read_list_stream). */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[OARD_ERRLEN];
    FILE *f = fuzz_stream(data, size);
    if (!f) return 0;
    ListEntry *L = NULL;
    int n = 0;
    int rc = read_list_stream(f, "dir/list.txt", &L, &n, err);
    if (rc == OARD_OK) {
        for (int i = 0; i < n; i++) { /* names are unique, non-empty, safe as file names */
            if (!L[i].name[0] || L[i].name[0] == '.' || strchr(L[i].name, '/')) abort();
            for (int j = 0; j < i; j++)
                if (!strcmp(L[i].name, L[j].name)) abort();
            (void)reaction_seed(42, L[i].name);
        }
    }
    list_free(L, n);
    fclose(f);
    return 0;
}
