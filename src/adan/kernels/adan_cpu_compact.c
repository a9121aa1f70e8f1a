/* Fused Adan step for the CPU with compact state or rounded low-precision parameters.
 *
 * The same update as adan_cpu.c (see there), in float32, unit by unit. Under int8 state
 * a unit is a block: every tensor is viewed as rows x cols and cut into blocks of up to BLOCK
 * consecutive columns of a row (src/adan/_compact.py documents the layout and the code maps).
 * The other formats update every element alike, so a unit is a span of up to SPAN
 * consecutive elements (a tensor is one row). Each unit is one vectorised pass that decodes
 * the state to float32, updates it and encodes it back (two for int8 state, whose codes need
 * the block's new maxima):
 *
 *   fmt 0  float32 state      stored as is
 *   fmt 1  bfloat16 state     m, v, n and -g_prev stochastically rounded to bfloat16
 *   fmt 2  int8 state         m, v: q = sign(x) floor(127 sqrt(|x|/s) + 1/2), x = s sign(q) (q/127)^2
 *                             (q = -128: NaN; s and the codes of the others ignore non-finite values)
 *                             n:    q = max(floor(255 (x/s)^(1/4) + 1/2), [x > 0]), x = s (q/255)^4
 *                             with s the block's largest magnitude (one float32 per block);
 *                             -g_prev in bfloat16, stochastically rounded
 *
 * Parameters: float32, bfloat16 or float16, written back by param_update:
 *   0 nearest, 1 stochastic rounding (bfloat16), 2 Kahan (comp holds the rounding residual,
 *   in the parameter's dtype, and is added back to the parameter before the update).
 *
 * Random bits for stochastic rounding come from a counter-based hash of (seed, tensor,
 * element): no state, the same bits whatever the thread count.
 * scalars[] = {lr, grad_mul, found_inf} as in adan_cpu.c; nothing is written when
 * found_inf != 0. Work is split across threads by units.
 */
#if defined(__GNUC__) && !defined(__clang__) && defined(__AVX512F__)
/* This kernel is compute-bound (the codecs, the rounding hash, square roots): GCC's full-
 * width AVX-512 vectors made it about 7-10% faster than its default 256-bit ones at one
 * thread (an interleaved A/B, docs/benchmarks.md). Each element's arithmetic is the same, so
 * are its results. The memory-bound float32 kernel keeps the default width. */
#pragma GCC target("prefer-vector-width=512")
#endif
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "adan_bf16.h"
#include "adan_f16.h"
#include "adan_math.h"
#include "parallel_slices.h"

#define BLOCK ADAN_BLOCK /* values per int8 scale, from adan/_codes.py */
/* Elements per unit of the formats without blocks. With units of BLOCK elements the bfloat16
 * step took about 4% longer at one thread (median of four pairs, docs/benchmarks.md): each
 * unit pays a tensor search, a dispatch and two hashes. */
#define SPAN 4096
#define NONFINITE_CODE ADAN_NONFINITE_CODE /* m, v codes run over [-127, 127]; this one marks NaN/inf */
#define FINITE(x) (fabsf(x) <= 3.402823466e38f) /* false for NaN and +-inf, branch-free */


static inline uint32_t mix32(uint32_t x) { /* a 32-bit integer hash (lowbias32) */
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

static inline float load_param(const void *p, int32_t dtype, int64_t i) {
    switch (dtype) {
    case DT_BF16: return bf16_to_f32(((const uint16_t *)p)[i]);
    case DT_F16: return f16_to_f32(((const uint16_t *)p)[i]);
    default: return ((const float *)p)[i];
    }
}

static inline void store_param(void *p, int32_t dtype, int64_t i, float x, int32_t mode, uint32_t noise16) {
    switch (dtype) {
    case DT_BF16:
        ((uint16_t *)p)[i] = mode == PU_STOCHASTIC ? f32_to_bf16_sr(x, noise16) : f32_to_bf16(x);
        break;
    case DT_F16: ((uint16_t *)p)[i] = f32_to_f16(x); break;
    default: ((float *)p)[i] = x;
    }
}

/* The parameter the update starts from: under Kahan updates, plus its compensation. */
static inline float read_param(const void *param, const void *comp, int32_t pdtype, int32_t pu, int64_t e) {
    const float p = load_param(param, pdtype, e);
    return pu == PU_KAHAN && pdtype != DT_F32 ? p + load_param(comp, pdtype, e) : p;
}

/* Write the new parameter by param_update; Kahan keeps what rounding lost in comp (computed
 * from the rounded value, not reloaded: the loops stay vectorised). */
static inline void write_param(void *param, void *comp, int32_t pdtype, int32_t pu, int64_t e, float x, uint32_t noise16) {
    if (pu == PU_KAHAN && pdtype != DT_F32) {
        const uint16_t h = pdtype == DT_BF16 ? f32_to_bf16(x) : f32_to_f16(x);
        const float back = pdtype == DT_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
        ((uint16_t *)param)[e] = h;
        ((uint16_t *)comp)[e] = pdtype == DT_BF16 ? f32_to_bf16(x - back) : f32_to_f16(x - back);
    } else {
        store_param(param, pdtype, e, x, pu, noise16);
    }
}

typedef struct {
    float a1, a2, c3, keep_diff;
} coef_t;

typedef struct {
    int32_t pdtype, fmt, param_update;
    float b1, b2, b3, omb1, omb2, omb3, gm, eps, pre, post;
    uint32_t seed_lo, seed_hi;
} conf_t;

/* A unit's length: an int8 block, or a span. */
#define UNIT(fmt) ((fmt) == FMT_INT8 ? BLOCK : SPAN)

/* One unit: columns [j UNIT, (j + 1) UNIT) of row `row` of a rows x cols tensor (see
 * unit_cols). pdtype, fmt and pu are compile-time constants in every call (see run_unit):
 * the compiler specialises each combination and vectorises its loops. */
static inline __attribute__((always_inline)) void unit_impl(
    const int32_t pdtype, const int32_t fmt, const int32_t pu, const conf_t *c, int64_t k, int64_t row,
    int64_t j, int64_t cols, void *param, const void *grad, void *mq, void *vq, void *nq, uint16_t *neg16,
    float *negf, float *ms, float *vs, float *ns, void *comp, coef_t cf) {
    const int64_t U = UNIT(fmt);
    const int64_t nb = (cols + U - 1) / U;
    const int64_t base = row * cols + j * U;
    const int64_t len = cols - j * U < U ? cols - j * U : U;
    const int64_t sidx = row * nb + j;
    const uint32_t key = mix32(c->seed_lo ^ mix32(c->seed_hi + (uint32_t)k * 0x9e3779b9u));
    const float b1 = c->b1, b2 = c->b2, b3 = c->b3, omb1 = c->omb1, omb2 = c->omb2, omb3 = c->omb3;
    const float gm = c->gm, eps = c->eps, pre = c->pre, post = c->post;
    const float a1 = cf.a1, a2 = cf.a2, c3 = cf.c3, keep = cf.keep_diff;

    /* Rounding bits: one 32-bit hash of (seed, tensor, 2 e) per element e. bfloat16 state
     * rounds m and n with its low half, v and the previous gradient with its high half (each
     * buffer's rounding is unbiased, as its 16 bits are uniform; the buffers of one element
     * share them). The hash of 2 e + 1 serves int8 state's previous gradient and
     * stochastically rounded parameters. */
    if (fmt == FMT_BF16) { /* one vectorised pass per span: decode, update, round, store */
        uint16_t *mb = (uint16_t *)mq + base, *vb = (uint16_t *)vq + base, *nb16 = (uint16_t *)nq + base;
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) {
            const int64_t e = base + i;
            const uint32_t r = mix32(key ^ (uint32_t)(2 * e));
            const float gi = load_param(grad, pdtype, e) * gm;
            const float p_old = read_param(param, comp, pdtype, pu, e);
            ADAN_ELEMENT(float, sqrtf, gi, bf16_to_f32(neg16[e]), bf16_to_f32(mb[i]), bf16_to_f32(vb[i]), bf16_to_f32(nb16[i]), p_old);
            write_param(param, comp, pdtype, pu, e, pi, pu == PU_STOCHASTIC ? mix32(key ^ (uint32_t)(2 * e + 1)) >> 16 : 0u);
            mb[i] = f32_to_bf16_sr(mi, r & 0xffffu);
            vb[i] = f32_to_bf16_sr(vi, r >> 16);
            nb16[i] = f32_to_bf16_sr(ni, r & 0xffffu);
            neg16[e] = f32_to_bf16_sr(-gi, r >> 16);
        }
        return;
    }
    if (fmt == FMT_F32) { /* float32 state: one pass, in place */
        float *mf = (float *)mq + base, *vf = (float *)vq + base, *nf = (float *)nq + base;
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) {
            const int64_t e = base + i;
            const float gi = load_param(grad, pdtype, e) * gm;
            const float p_old = read_param(param, comp, pdtype, pu, e);
            ADAN_ELEMENT(float, sqrtf, gi, negf[e], mf[i], vf[i], nf[i], p_old);
            write_param(param, comp, pdtype, pu, e, pi, pu == PU_STOCHASTIC ? mix32(key ^ (uint32_t)(2 * e + 1)) >> 16 : 0u);
            mf[i] = mi;
            vf[i] = vi;
            nf[i] = ni;
            negf[e] = -gi;
        }
        return;
    }

    /* int8 state: decode, update, round the previous gradient and take the block maxima in
     * one pass; encode with the maxima in a second. Non-finite values are left out of the
     * maxima (see FINITE): x * 0 is NaN for NaN and inf, so the probe's sum is NaN iff any
     * value is, and the rare such block takes the maxima again over its finite values. */
    float m[BLOCK], v[BLOCK], n[BLOCK], rn[BLOCK]; /* rn: sqrt(n), from the update */
    float amax_m = 0.0f, amax_v = 0.0f, max_n = 0.0f, probe = 0.0f;
    {
        const int8_t *mc = (const int8_t *)mq + base, *vc = (const int8_t *)vq + base;
        const uint8_t *nc = (const uint8_t *)nq + base;
        const float fm = ms[sidx] / 16129.0f, fv = vs[sidx] / 16129.0f, fn = ns[sidx] / 4228250625.0f;
#pragma omp simd reduction(max : amax_m, amax_v, max_n) reduction(+ : probe)
        for (int64_t i = 0; i < len; ++i) {
            const int64_t e = base + i;
            const float qm = (float)mc[i], qv = (float)vc[i], qn = (float)nc[i], qn2 = qn * qn;
            const float m_old = qm == (float)NONFINITE_CODE ? NAN : qm * fabsf(qm) * fm; /* selects, not branches */
            const float v_old = qv == (float)NONFINITE_CODE ? NAN : qv * fabsf(qv) * fv;
            const uint32_t r = mix32(key ^ (uint32_t)(2 * e + 1));
            const float gi = load_param(grad, pdtype, e) * gm;
            const float p_old = read_param(param, comp, pdtype, pu, e);
            ADAN_ELEMENT(float, sqrtf, gi, bf16_to_f32(neg16[e]), m_old, v_old, qn2 * qn2 * fn, p_old);
            write_param(param, comp, pdtype, pu, e, pi, pu == PU_STOCHASTIC ? r >> 16 : 0u);
            neg16[e] = f32_to_bf16_sr(-gi, r & 0xffffu);
            m[i] = mi;
            v[i] = vi;
            n[i] = ni;
            rn[i] = root_n;
            amax_m = fabsf(mi) > amax_m ? fabsf(mi) : amax_m;
            amax_v = fabsf(vi) > amax_v ? fabsf(vi) : amax_v;
            max_n = ni > max_n ? ni : max_n;
            probe += (mi + vi + ni) * 0.0f;
        }
    }
    const int nonfinite = probe != probe;
    if (nonfinite) { /* rare: the maxima over the finite values only */
        amax_m = amax_v = max_n = 0.0f;
        for (int64_t i = 0; i < len; ++i) {
            const float am = FINITE(m[i]) ? fabsf(m[i]) : 0.0f, av = FINITE(v[i]) ? fabsf(v[i]) : 0.0f;
            const float an = FINITE(n[i]) ? n[i] : 0.0f;
            amax_m = am > amax_m ? am : amax_m;
            amax_v = av > amax_v ? av : amax_v;
            max_n = an > max_n ? an : max_n;
        }
    }
    /* A block whose largest value is subnormal gets the scale FLT_MIN: 1/amax would overflow
     * to inf and turn every code into the non-finite mark (NaN once decoded). */
    amax_m = amax_m > 0.0f && amax_m < FLT_MIN ? FLT_MIN : amax_m;
    amax_v = amax_v > 0.0f && amax_v < FLT_MIN ? FLT_MIN : amax_v;
    max_n = max_n > 0.0f && max_n < FLT_MIN ? FLT_MIN : max_n;
    int8_t *mc = (int8_t *)mq + base, *vc = (int8_t *)vq + base;
    uint8_t *nc = (uint8_t *)nq + base;
    const float im = amax_m > 0.0f ? 1.0f / amax_m : 0.0f, iv = amax_v > 0.0f ? 1.0f / amax_v : 0.0f,
                in = max_n > 0.0f ? 1.0f / sqrtf(max_n) : 0.0f; /* n's code: sqrt(sqrt(n) / sqrt(max_n)) */
    ms[sidx] = amax_m;
    vs[sidx] = amax_v;
    ns[sidx] = max_n;
    if (!nonfinite) { /* the usual block: the plain loop (the marking one is slower) */
        for (int64_t i = 0; i < len; ++i) {
            const float qm = floorf(sqrtf(fabsf(m[i]) * im) * 127.0f + 0.5f);
            const float qv = floorf(sqrtf(fabsf(v[i]) * iv) * 127.0f + 0.5f);
            float qn = floorf(sqrtf(rn[i] * in) * 255.0f + 0.5f);
            qn = n[i] > 0.0f && qn < 1.0f ? 1.0f : qn;
            mc[i] = (int8_t)(m[i] < 0.0f ? -qm : qm);
            vc[i] = (int8_t)(v[i] < 0.0f ? -qv : qv);
            nc[i] = (uint8_t)qn;
        }
    } else {
        for (int64_t i = 0; i < len; ++i) {
            /* NaN/inf never pass a "<= largest code" test: such an m or v gets the code -128
             * (decoded as NaN), and a non-finite n marks its element's m (n's 8 bits cannot
             * say NaN). Written as float selects, the loop stays vectorised. */
            const float qm = floorf(sqrtf(fabsf(m[i]) * im) * 127.0f + 0.5f);
            const float qv = floorf(sqrtf(fabsf(v[i]) * iv) * 127.0f + 0.5f);
            float qn = floorf(sqrtf(rn[i] * in) * 255.0f + 0.5f);
            mc[i] = (int8_t)(qm <= 127.0f && qn <= 255.0f ? (m[i] < 0.0f ? -qm : qm) : (float)NONFINITE_CODE);
            vc[i] = (int8_t)(qv <= 127.0f ? (v[i] < 0.0f ? -qv : qv) : (float)NONFINITE_CODE);
            nc[i] = (uint8_t)(qn <= 255.0f ? (n[i] > 0.0f && qn < 1.0f ? 1.0f : qn) : 0.0f);
        }
    }
}

#define UNIT_ARGS c, k, row, j, cols, param, grad, mq, vq, nq, neg16, negf, ms, vs, ns, comp, cf
#define PU_CASES(PD, F)                                                                       \
    switch (c->param_update) {                                                                \
    case PU_NEAREST: unit_impl(PD, F, PU_NEAREST, UNIT_ARGS); return;                          \
    case PU_STOCHASTIC: unit_impl(PD, F, PU_STOCHASTIC, UNIT_ARGS); return;                    \
    default: unit_impl(PD, F, PU_KAHAN, UNIT_ARGS); return;                                    \
    }
#define FMT_CASES(PD)                                                                         \
    switch (c->fmt) {                                                                         \
    case FMT_F32: PU_CASES(PD, FMT_F32);                                                      \
    case FMT_BF16: PU_CASES(PD, FMT_BF16);                                                    \
    default: PU_CASES(PD, FMT_INT8);                                                          \
    }

/* The columns a unit of tensor k is cut from: its rows' under int8 state, else all of it. */
static inline int64_t unit_cols(int32_t fmt, const int64_t *rows, const int64_t *cols, int64_t k) {
    return fmt == FMT_INT8 ? cols[k] : rows[k] * cols[k];
}

static void run_unit(const conf_t *c, int64_t k, int64_t row, int64_t j, int64_t cols, void *param,
                      const void *grad, void *mq, void *vq, void *nq, uint16_t *neg16, float *negf,
                      float *ms, float *vs, float *ns, void *comp, coef_t cf) {
    switch (c->pdtype) {
    case DT_F32: FMT_CASES(DT_F32);
    case DT_BF16: FMT_CASES(DT_BF16);
    default: FMT_CASES(DT_F16);
    }
}

/* Returns 0 on success, 1 for an unknown dtype/format/mode, 2 when out of memory. */
int adan_fused_step_compact(int64_t n_tensors, int32_t pdtype, int32_t fmt, int32_t param_update,
                            const int64_t *rows, const int64_t *cols, void *const *params,
                            const void *const *grads, void *const *exp_avgs, void *const *exp_avg_diffs,
                            void *const *exp_avg_sqs, void *const *neg_pre_grads, float *const *m_scales,
                            float *const *v_scales, float *const *n_scales, void *const *comps,
                            float *const *steps, const double *scalars, const int64_t *seed, double beta1,
                            double beta2, double beta3, double eps, double weight_decay, int32_t no_prox,
                            int32_t n_threads) {
    if ((pdtype != DT_F32 && pdtype != DT_BF16 && pdtype != DT_F16) || fmt < FMT_F32 || fmt > FMT_INT8 ||
        param_update < PU_NEAREST || param_update > PU_KAHAN)
        return 1;
    const double lr = scalars[0], grad_mul = scalars[1], found_inf = scalars[2];
    if (found_inf != 0.0 || n_tensors == 0) return 0;

    coef_t *coefs = (coef_t *)malloc((size_t)n_tensors * sizeof(coef_t));
    int64_t *first_unit = (int64_t *)malloc((size_t)(n_tensors + 1) * sizeof(int64_t));
    if (!coefs || !first_unit) {
        free(coefs);
        free(first_unit);
        return 2;
    }
    first_unit[0] = 0;
    const int64_t unit = UNIT(fmt);
    int64_t total = 0;
    for (int64_t k = 0; k < n_tensors; ++k) {
        const adan_coef_t d = adan_step_coef(steps[k], lr, beta1, beta2, beta3);
        coefs[k].a1 = (float)d.a1;
        coefs[k].a2 = (float)d.a2;
        coefs[k].c3 = (float)d.c3;
        coefs[k].keep_diff = (float)d.keep_diff;
        const int64_t unit_rows = fmt == FMT_INT8 ? rows[k] : 1;
        first_unit[k + 1] = first_unit[k] + unit_rows * ((unit_cols(fmt, rows, cols, k) + unit - 1) / unit);
        total += rows[k] * cols[k];
    }
    conf_t c;
    c.pdtype = pdtype;
    c.fmt = fmt;
    c.param_update = param_update;
    c.b1 = (float)beta1;
    c.b2 = (float)beta2;
    c.b3 = (float)beta3;
    c.omb1 = (float)(1.0 - beta1);
    c.omb2 = (float)(1.0 - beta2);
    c.omb3 = (float)(1.0 - beta3);
    c.gm = (float)grad_mul;
    c.eps = (float)eps;
    c.pre = (float)adan_pre(lr, weight_decay, no_prox);
    c.post = (float)adan_post(lr, weight_decay, no_prox);
    c.seed_lo = (uint32_t)((uint64_t)seed[0] & 0xffffffffu);
    c.seed_hi = (uint32_t)((uint64_t)seed[0] >> 32);
    const int neg_is_f32 = fmt == FMT_F32;
    const int64_t n_units = first_unit[n_tensors];
    const int64_t threads = adan_thread_count(total, n_threads);

#pragma omp parallel for schedule(static) num_threads((int)threads) if (threads > 1)
    for (int64_t b = 0; b < n_units; ++b) {
        int64_t lo = 0, hi = n_tensors; /* the tensor holding unit b */
        while (hi - lo > 1) {
            const int64_t mid = (lo + hi) / 2;
            if (first_unit[mid] <= b) lo = mid; else hi = mid;
        }
        const int64_t k = lo, jb = b - first_unit[k], kc = unit_cols(fmt, rows, cols, k), nb = (kc + unit - 1) / unit;
        run_unit(&c, k, jb / nb, jb % nb, kc, params[k], grads[k], exp_avgs[k], exp_avg_diffs[k],
                  exp_avg_sqs[k], neg_is_f32 ? NULL : (uint16_t *)neg_pre_grads[k],
                  neg_is_f32 ? (float *)neg_pre_grads[k] : NULL, fmt == FMT_INT8 ? m_scales[k] : NULL,
                  fmt == FMT_INT8 ? v_scales[k] : NULL, fmt == FMT_INT8 ? n_scales[k] : NULL,
                  comps ? comps[k] : NULL, coefs[k]);
    }
    free(coefs);
    free(first_unit);
    return 0;
}
