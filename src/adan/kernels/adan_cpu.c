/* Fused Adan step for the CPU: one pass over the elements of all tensors of a bucket.
 *
 * Plain C11 + OpenMP, no torch headers: the Python side hands over data pointers.
 * For each tensor k with numel[k] elements, in the compute type T (float, or double for
 * float64 parameters; bfloat16/float16 parameters are computed in float and keep float
 * state):
 *
 *   g  = grad * grad_mul                 (clip factor, maximize sign, 1/amp scale)
 *   d  = g + neg_pre_grad                (neg_pre_grad = -g_prev; d = 0 at t == 1, the
 *                                         first step and the first after a restart)
 *   m  = b1 m + (1 - b1) g
 *   v  = b2 v + (1 - b2) d
 *   n  = b3 n + (1 - b3) (g + b2 d)^2
 *   p  = (p * pre - (a1 m + a2 v) / (sqrt(n) c3 + eps)) * post
 *   neg_pre_grad = -g
 *
 * with, from the step count t (incremented here) and lr, in double:
 *   a1 = lr / (1 - b1^t),  a2 = lr b2 / (1 - b2^t),  c3 = 1 / sqrt(1 - b3^t),
 *   pre = 1 - lr wd (no_prox) or 1,  post = 1 / (1 + lr wd) (proximal) or 1.
 *
 * scalars[] = {lr, grad_mul, found_inf}: when found_inf != 0 nothing is written at all
 * (the step counts included), as torch's fused AdamW does with a GradScaler.
 * The work is split across threads by elements, not by tensors.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "adan_bf16.h"
#include "adan_f16.h"
#include "adan_math.h"
#include "parallel_slices.h"

typedef adan_coef_t coef_t;

#define ADAN_LOOP(T, SQRT, PT, LOAD, STORE)                                                   \
    do {                                                                                      \
        PT *restrict p = (PT *)params[k];                                                     \
        const PT *restrict gr = (const PT *)grads[k];                                         \
        T *restrict m = (T *)exp_avgs[k];                                                     \
        T *restrict v = (T *)exp_avg_diffs[k];                                                \
        T *restrict n = (T *)exp_avg_sqs[k];                                                  \
        T *restrict ng = (T *)neg_pre_grads[k];                                               \
        const T b1 = (T)beta1, b2 = (T)beta2, b3 = (T)beta3;                                  \
        const T omb1 = (T)(1.0 - beta1), omb2 = (T)(1.0 - beta2), omb3 = (T)(1.0 - beta3);     \
        const T gm = (T)grad_mul, eps = (T)eps_, pre = (T)pre_, post = (T)post_;              \
        const T a1 = (T)coefs[k].a1, a2 = (T)coefs[k].a2, c3 = (T)coefs[k].c3;                \
        const T keep = (T)coefs[k].keep_diff;                                                 \
        _Pragma("omp simd")                                                                   \
        for (int64_t i = lo; i < hi; ++i) {                                                   \
            const T g = (T)LOAD(gr[i]) * gm;                                                  \
            ADAN_ELEMENT(T, SQRT, g, ng[i], m[i], v[i], n[i], (T)LOAD(p[i]));                 \
            m[i] = mi;                                                                        \
            v[i] = vi;                                                                        \
            n[i] = ni;                                                                        \
            ng[i] = -g;                                                                       \
            p[i] = STORE(pi);                                                                 \
        }                                                                                     \
    } while (0)

#define IDENT(x) (x)
#define F16_LOAD(x) f16_to_f32(x)
#define F16_STORE(x) f32_to_f16(x)

static void run_range(int32_t dtype, int64_t k, int64_t lo, int64_t hi, void *const *params,
                      const void *const *grads, void *const *exp_avgs, void *const *exp_avg_diffs,
                      void *const *exp_avg_sqs, void *const *neg_pre_grads, const coef_t *coefs,
                      double beta1, double beta2, double beta3, double eps_, double grad_mul,
                      double pre_, double post_) {
    switch (dtype) {
    case DT_F32: ADAN_LOOP(float, sqrtf, float, IDENT, IDENT); break;
    case DT_F64: ADAN_LOOP(double, sqrt, double, IDENT, IDENT); break;
    case DT_BF16: ADAN_LOOP(float, sqrtf, uint16_t, bf16_to_f32, f32_to_bf16); break;
    case DT_F16: ADAN_LOOP(float, sqrtf, uint16_t, F16_LOAD, F16_STORE); break;
    }
}

/* Returns 0 on success, 1 for an unknown dtype, 2 when out of memory. */
int adan_fused_step(int64_t n_tensors, int32_t dtype, const int64_t *numels, void *const *params,
                    const void *const *grads, void *const *exp_avgs, void *const *exp_avg_diffs,
                    void *const *exp_avg_sqs, void *const *neg_pre_grads, float *const *steps,
                    const double *scalars, double beta1, double beta2, double beta3, double eps,
                    double weight_decay, int32_t no_prox, int32_t n_threads) {
    if (dtype != DT_F32 && dtype != DT_F64 && dtype != DT_BF16 && dtype != DT_F16) return 1;
    const double lr = scalars[0], grad_mul = scalars[1], found_inf = scalars[2];
    if (found_inf != 0.0 || n_tensors == 0) return 0;

    coef_t *coefs = (coef_t *)malloc((size_t)n_tensors * sizeof(coef_t));
    int64_t *offsets = (int64_t *)malloc((size_t)(n_tensors + 1) * sizeof(int64_t));
    if (!coefs || !offsets) {
        free(coefs);
        free(offsets);
        return 2;
    }
    offsets[0] = 0;
    for (int64_t k = 0; k < n_tensors; ++k) {
        coefs[k] = adan_step_coef(steps[k], lr, beta1, beta2, beta3);
        offsets[k + 1] = offsets[k] + numels[k];
    }
    const double pre = adan_pre(lr, weight_decay, no_prox), post = adan_post(lr, weight_decay, no_prox);
    PARALLEL_SLICES(n_tensors, offsets, n_threads,
                    run_range(dtype, k, lo, hi, params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs,
                              neg_pre_grads, coefs, beta1, beta2, beta3, eps, grad_mul, pre, post));
    free(coefs);
    free(offsets);
    return 0;
}
