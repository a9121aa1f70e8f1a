/* bfloat16 <-> float32 conversions shared by the CPU kernels (bfloat16 is the top half of
 * a float32). */
#ifndef ADAN_BF16_H
#define ADAN_BF16_H
#include <stdint.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Both conversions keep a NaN a (quiet) NaN: its top half with the quiet bit set, chosen by
 * a float compare and a select, which vectorise to a masked operation or two (an integer
 * range test and an early return cost the bfloat16-state kernel 4-7% at one thread;
 * the results are the same bits). */
static inline uint16_t f32_to_bf16(float f) { /* round to nearest even */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    const uint32_t v = f != f ? (u | 0x400000u) : u + 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(v >> 16);
}

/* Stochastic rounding: 16 random bits added below the kept ones, then truncation, round up
 * with probability (f - down) / (up - down). */
static inline uint16_t f32_to_bf16_sr(float f, uint32_t noise16) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    const uint32_t v = f != f ? (u | 0x400000u) : u + noise16;
    return (uint16_t)(v >> 16);
}

#endif
