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

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even, NaN kept quiet */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* Stochastic rounding: 16 random bits added below the kept ones, then truncation, round up
 * with probability (f - down) / (up - down). NaN kept quiet. */
static inline uint16_t f32_to_bf16_sr(float f, uint32_t noise16) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + noise16) >> 16);
}

#endif
