/* Float vectors of four lanes (GCC / clang vector extensions: SSE2 on x86-64, NEON on arm64, plain code
   elsewhere) and, on x86-64, of eight lanes for CPUs with AVX2 (functions compiled for that target and
   chosen at run time), for the float compositor in raster_simd.h: lanes are neighbouring pixels of a tile
   row. Comparisons give lane masks (-1 / 0); masked lanes are cleared bitwise, so inf or NaN in them never
   reaches a sum. The eight-lane code does the same arithmetic per lane (no FMA), so both give the same
   images. Included once by render.c. */
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SIMD_AVX2 1
#define AVX2_ATTR __attribute__((target("avx2")))
#else
#define SIMD_AVX2 0
#endif

typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

/* exp(x) within 1 ulp of expf for x in [-87, 88] (Cephes' expf: Cody-Waite reduction by ln 2, degree-6
   polynomial, 2^n through the exponent bits); NaN stays NaN. VF / VI: the float / int vector types. */
#define SIMD_EXP_BODY(VF, VI, SPLAT, SEL)                                                    \
    const VF magic = SPLAT(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */ \
    VF xc = SEL(x < -87.0f, SPLAT(-87.0f), x);                                             \
    xc = SEL(xc > 88.0f, SPLAT(88.0f), xc);                                                \
    VF t = xc * 1.44269504088896341f + magic;                                              \
    VI n = (VI)t - (VI)magic; /* round(x / ln 2) */                                        \
    VF fn = t - magic;                                                                     \
    VF r = xc - fn * 0.693359375f;                                                         \
    r = r - fn * -2.12194440e-4f;                                                          \
    VF p = SPLAT(1.9875691500e-4f);                                                        \
    p = p * r + 1.3981999507e-3f;                                                          \
    p = p * r + 8.3334519073e-3f;                                                          \
    p = p * r + 4.1665795894e-2f;                                                          \
    p = p * r + 1.6666665459e-1f;                                                          \
    p = p * r + 5.0000001201e-1f;                                                          \
    p = p * (r * r) + r + 1.0f;                                                            \
    VF y = p * (VF)((n + 127) << 23);                                                      \
    return SEL(x != x, x, y);

static inline v4f v4f_splat(float x) { return (v4f){x, x, x, x}; }
static inline v4i v4i_splat(int32_t x) { return (v4i){x, x, x, x}; }
static inline v4f v4f_and(v4f x, v4i m) { return (v4f)((v4i)x & m); }
static inline v4f v4f_sel(v4i m, v4f a, v4f b) { return (v4f)(((v4i)a & m) | ((v4i)b & ~m)); }
static inline v4i v4i_sel(v4i m, v4i a, v4i b) { return (a & m) | (b & ~m); }
static inline float v4f_sum(v4f x) { return (x[0] + x[1]) + (x[2] + x[3]); }
static inline v4f v4f_exp(v4f x) { SIMD_EXP_BODY(v4f, v4i, v4f_splat, v4f_sel) }

/* bit l set where lane l of the mask is set */
static inline int v4_bits(v4i m) {
#if defined(__SSE2__)
    return _mm_movemask_ps((__m128)m);
#else
    return (m[0] & 1) | (m[1] & 2) | (m[2] & 4) | (m[3] & 8);
#endif
}

#if SIMD_AVX2
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

static inline AVX2_ATTR v8f v8f_splat(float x) { return (v8f){x, x, x, x, x, x, x, x}; }
static inline AVX2_ATTR v8i v8i_splat(int32_t x) { return (v8i){x, x, x, x, x, x, x, x}; }
static inline AVX2_ATTR v8f v8f_and(v8f x, v8i m) { return (v8f)((v8i)x & m); }
static inline AVX2_ATTR v8f v8f_sel(v8i m, v8f a, v8f b) { return (v8f)(((v8i)a & m) | ((v8i)b & ~m)); }
static inline AVX2_ATTR v8i v8i_sel(v8i m, v8i a, v8i b) { return (a & m) | (b & ~m); }
static inline AVX2_ATTR float v8f_sum(v8f x) {
    return ((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7]));
}
static inline AVX2_ATTR v8f v8f_exp(v8f x) { SIMD_EXP_BODY(v8f, v8i, v8f_splat, v8f_sel) }
static inline AVX2_ATTR int v8_bits(v8i m) { return _mm256_movemask_ps((__m256)m); }
#endif
