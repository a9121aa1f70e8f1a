/* Split the concatenated elements of several tensors evenly across OpenMP threads.
 *
 * PARALLEL_SLICES(n_tensors, offsets, n_threads, BODY...) runs BODY with k (tensor index),
 * lo and hi (element range inside tensor k) bound, for contiguous slices of about
 * total / n_threads elements each: one huge tensor still uses every thread, and many
 * tiny ones are not one task each. offsets[k] is the first element of tensor k in the
 * concatenation (offsets[n_tensors] = total). Shared by the Adan kernel and the
 * benchmark's memory-traffic floor so that both are split the same way.
 */
#ifndef ADAN_PARALLEL_SLICES_H
#define ADAN_PARALLEL_SLICES_H
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define ADAN_MIN_PER_THREAD 32768 /* below this a thread costs more than it saves */

static inline int64_t adan_thread_count(int64_t total, int32_t requested) {
    int64_t t = requested > 0 ? requested : 1;
    const int64_t cap = total / ADAN_MIN_PER_THREAD;
    return t > cap ? (cap > 0 ? cap : 1) : t;
}

static inline int adan_thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static inline int adan_num_threads(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

#define PARALLEL_SLICES(n_tensors, offsets, n_threads, ...)                                   \
    do {                                                                                      \
        const int64_t total_ = (offsets)[n_tensors];                                          \
        const int64_t threads_ = adan_thread_count(total_, (n_threads));                      \
        _Pragma("omp parallel num_threads((int)threads_) if (threads_ > 1)")                  \
        {                                                                                     \
            const int64_t nt_ = adan_num_threads(), tid_ = adan_thread_id();                  \
            const int64_t chunk_ = ((total_ + nt_ - 1) / nt_ + 63) & ~(int64_t)63;            \
            const int64_t begin_ = tid_ * chunk_ < total_ ? tid_ * chunk_ : total_;           \
            const int64_t end_ = begin_ + chunk_ < total_ ? begin_ + chunk_ : total_;         \
            int64_t k = 0, hi_k_ = (n_tensors);                                               \
            while (k < hi_k_) { /* first tensor that ends after begin_ */                     \
                const int64_t mid_ = (k + hi_k_) / 2;                                         \
                if ((offsets)[mid_ + 1] <= begin_) k = mid_ + 1; else hi_k_ = mid_;           \
            }                                                                                 \
            for (; begin_ < end_ && k < (n_tensors) && (offsets)[k] < end_; ++k) {            \
                const int64_t lo = (begin_ > (offsets)[k] ? begin_ : (offsets)[k]) - (offsets)[k]; \
                const int64_t hi = (end_ < (offsets)[k + 1] ? end_ : (offsets)[k + 1]) - (offsets)[k]; \
                if (lo < hi) { __VA_ARGS__; }                                                 \
            }                                                                                 \
        }                                                                                     \
    } while (0)

#endif
