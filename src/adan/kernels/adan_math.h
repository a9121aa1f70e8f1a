/* The Adan update, written once for the C kernels (adan_cpu.c, adan_cpu_compact.c).
 *
 * Per tensor, from its step count t (incremented here) and lr, in double:
 *   a1 = lr / (1 - b1^t),  a2 = lr b2 / (1 - b2^t),  c3 = 1 / sqrt(1 - b3^t),
 *   keep = 0 at t == 1 (the previous gradient is the current one), else 1;
 *   pre = 1 - lr wd (no_prox) or 1,  post = 1 / (1 + lr wd) (proximal) or 1.
 *
 * Per element, in the compute type T, with g the scaled gradient and prev = -g_prev:
 *   d = (g + prev) keep
 *   m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) d,  n = b3 n + (1 - b3) (g + b2 d)^2
 *   p = (p pre - (a1 m + a2 v) / (sqrt(n) c3 + eps)) post
 * The kernels only load, convert and store around it.
 */
#ifndef ADAN_MATH_H
#define ADAN_MATH_H
#include <math.h>

/* The integer codes of dtypes, state formats and parameter updates come from one Python
 * enum (src/adan/_codes.py), passed as -D macros by the build (src/adan/_native.py). */
#ifndef ADAN_DT_F32
#error "compile through adan._native.load_library, which defines the codes of adan/_codes.py"
#endif
enum { DT_F32 = ADAN_DT_F32, DT_F64 = ADAN_DT_F64, DT_BF16 = ADAN_DT_BF16, DT_F16 = ADAN_DT_F16 };
enum { FMT_F32 = ADAN_FMT_F32, FMT_BF16 = ADAN_FMT_BF16, FMT_INT8 = ADAN_FMT_INT8 };
enum { PU_NEAREST = ADAN_PU_NEAREST, PU_STOCHASTIC = ADAN_PU_STOCHASTIC, PU_KAHAN = ADAN_PU_KAHAN };

typedef struct {
    double a1, a2, c3, keep_diff;
} adan_coef_t;

static inline adan_coef_t adan_step_coef(float *step, double lr, double beta1, double beta2, double beta3) {
    const double t = (double)(*step += 1.0f);
    adan_coef_t c;
    c.a1 = lr / (1.0 - pow(beta1, t));
    c.a2 = lr * beta2 / (1.0 - pow(beta2, t));
    c.c3 = 1.0 / sqrt(1.0 - pow(beta3, t));
    c.keep_diff = t == 1.0 ? 0.0 : 1.0;
    return c;
}

static inline double adan_pre(double lr, double weight_decay, int no_prox) { return no_prox ? 1.0 - lr * weight_decay : 1.0; }
static inline double adan_post(double lr, double weight_decay, int no_prox) { return no_prox ? 1.0 : 1.0 / (1.0 + lr * weight_decay); }

/* The element update. Declares d, mi, vi, ni (the new moments), root_n (sqrt(ni), which the
 * int8 encoder reuses) and pi (the new parameter) of type T in the enclosing scope, from g,
 * prev, the old m, v, n and p; the scalars b1, b2, b3, omb1 (1 - b1), omb2, omb3, a1, a2, c3,
 * keep, eps, pre and post must be in scope. */
#define ADAN_ELEMENT(T, SQRT, g, prev, m_old, v_old, n_old, p_old)        \
    const T d = ((g) + (prev)) * keep;                                    \
    const T mi = b1 * (m_old) + omb1 * (g);                               \
    const T vi = b2 * (v_old) + omb2 * d;                                 \
    const T u_ = (g) + b2 * d;                                            \
    const T ni = b3 * (n_old) + omb3 * (u_ * u_);                         \
    const T root_n = SQRT(ni);                                            \
    const T denom_ = root_n * c3 + eps;                                   \
    const T pi = ((p_old) * pre - (a1 * mi + a2 * vi) / denom_) * post

#endif
