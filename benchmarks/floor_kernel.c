/* The memory-traffic floor of one Adan step: read 6 arrays, write 5, no real maths.
 *
 * Built and split across threads exactly as the fused Adan CPU kernel
 * (adan/kernels/parallel_slices.h), so the ratio fused / floor measures how far the
 * kernel is from the bandwidth it must move.
 */
#include <stdint.h>
#include <stdlib.h>

#include "parallel_slices.h"

int floor_step(int64_t n_tensors, const int64_t *numels, float *const *p, const float *const *g,
               float *const *m, float *const *v, float *const *n, float *const *neg, int32_t n_threads) {
    int64_t *offsets = (int64_t *)malloc((size_t)(n_tensors + 1) * sizeof(int64_t));
    if (!offsets) return 2;
    offsets[0] = 0;
    for (int64_t k = 0; k < n_tensors; ++k) offsets[k + 1] = offsets[k] + numels[k];
    PARALLEL_SLICES(n_tensors, offsets, n_threads, {
        float *restrict pk = p[k], *restrict mk = m[k], *restrict vk = v[k], *restrict nk = n[k];
        float *restrict qk = neg[k];
        const float *restrict gk = g[k];
        _Pragma("omp simd")
        for (int64_t i = lo; i < hi; ++i) {
            const float a = gk[i];
            mk[i] += a;
            vk[i] += a;
            nk[i] += a;
            qk[i] += a;
            pk[i] += a;
        }
    });
    free(offsets);
    return 0;
}
