/* IEEE float16 <-> float32 conversions in plain integer and float operations.
 *
 * gcc (before AVX512-FP16) has no vector type for _Float16, so a loop over _Float16 data
 * stays scalar. Stored as uint16_t and converted with these branch-free functions (after
 * F. Giesen's half_to_float / float_to_half_fast3_rtne), the loops vectorise. Rounding is
 * to nearest even; subnormals, infinities and NaNs are handled (NaN becomes a quiet NaN).
 */
#ifndef ADAN_F16_H
#define ADAN_F16_H
#include <stdint.h>
#include <string.h>

static inline float adan_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t adan_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float f16_to_f32(uint16_t h) {
    /* exponent and mantissa moved into float32 position, rebiased by a multiply by 2^112
     * (which also normalises subnormals); infinities and NaNs get the full exponent. */
    const float scaled = adan_bits_f32(((uint32_t)h & 0x7fffu) << 13) * adan_bits_f32(0x77800000u);
    const uint32_t infnan = ((uint32_t)h & 0x7c00u) == 0x7c00u ? 0x7f800000u : 0u;
    return adan_bits_f32(adan_f32_bits(scaled) | infnan | (((uint32_t)h & 0x8000u) << 16));
}

static inline uint16_t f32_to_f16(float f) {
    const uint32_t u0 = adan_f32_bits(f);
    const uint32_t sign = (u0 >> 16) & 0x8000u;
    const uint32_t u = u0 & 0x7fffffffu;
    /* subnormal or zero result: let the float adder round, by adding 0.5 */
    const uint32_t sub = adan_f32_bits(adan_bits_f32(u) + 0.5f) - 0x3f000000u;
    /* normal result: rebias the exponent and round the mantissa to nearest even */
    const uint32_t norm = (u + 0xc8000fffu + ((u >> 13) & 1u)) >> 13;
    uint32_t o = u < 0x38800000u ? sub : norm;
    o = u >= 0x47800000u ? 0x7c00u : o;          /* overflow to infinity */
    o = u > 0x7f800000u ? 0x7e00u : o;           /* NaN stays NaN (quiet) */
    return (uint16_t)(o | sign);
}

#endif
