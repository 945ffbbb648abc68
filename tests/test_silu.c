/*
 * test_silu.c - the vectorised SiLU against its scalar definition, for every float.
 *
 * Where fmaf is one instruction, SiLU's exponential is silu_expf: a branch-free form of
 * the Sleef expf that PyTorch's CPU SiLU uses, with its own clamping and rounding (see
 * oa_reactdiff.c). Its claim is that SiLU comes out as x / (1 + torch_expf(-x)) bit for
 * bit, torch_expf being the plain transcription of Sleef's xexpf (u10) with its branches,
 * which the golden cases check against upstream. This test checks the claim on all 2^32 bit patterns,
 * through silu_inplace (the vectorised loop every layer runs) and silu (the scalar one).
 * Built with -march=native (the build that has the single-instruction fmaf); elsewhere
 * it says SKIP. It includes the engine's source to reach its static functions.
 */
#define OARD_NO_MAIN
#include "../oa_reactdiff.c"

#ifdef SILU_SLEEF
/* the definition: torch's SiLU, x / (1 + exp(-x)), with the scalar Sleef expf */
NO_FMA_FN static float silu_reference(float x) { return x / (1.0f + torch_expf(-x)); }

static int same_bits(float a, float b) { return f2i(a) == f2i(b); }

int main(void) {
    enum { CHUNK = 4096 };
    static float y[CHUNK];
    unsigned long long bad_vec = 0, bad_scalar = 0, checked = 0;
    for (uint64_t base = 0; base < (1ull << 32); base += CHUNK) {
        for (int i = 0; i < CHUNK; i++) y[i] = i2f((int32_t)(uint32_t)(base + (uint64_t)i));
        silu_inplace(y, CHUNK);
        for (int i = 0; i < CHUNK; i++) {
            float x = i2f((int32_t)(uint32_t)(base + (uint64_t)i)), want = silu_reference(x);
            int nan_ok = isnan(want) && isnan(y[i]); /* NaN payloads may differ */
            if (!nan_ok && !same_bits(y[i], want) && bad_vec++ < 5)
                printf("  silu_inplace(%a) = %a, want %a\n", (double)x, (double)y[i], (double)want);
            float s = silu(x);
            if (!(isnan(want) && isnan(s)) && !same_bits(s, want) && bad_scalar++ < 5)
                printf("  silu(%a) = %a, want %a\n", (double)x, (double)s, (double)want);
            checked++;
        }
    }
    printf("test_silu: %llu floats, vectorised SiLU mismatches %llu, scalar %llu (tolerance: 0, bit for bit)\n",
           checked, bad_vec, bad_scalar);
    return bad_vec || bad_scalar ? 1 : 0;
}
#else
int main(void) {
    printf("SKIP test_silu: this build's SiLU uses the C library's exp (no single-instruction fmaf)\n");
    return 0;
}
#endif
